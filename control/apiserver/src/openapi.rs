//! The OpenAPI documents: `/openapi/v2` (Swagger 2.0, one document for every group) and
//! `/openapi/v3` (an index of one OpenAPI 3.0 document per group version), which kubectl reads
//! for `explain` and to learn that the server validates fields (`fieldValidation` on PATCH).
//!
//! The schemas are generated from the k8s-openapi types, whose `schemars` implementations carry
//! Kubernetes' definition names (`io.k8s.api.core.v1.Pod`), field descriptions, types and
//! references; list kinds are derived from their item kinds. The paths and operations come from
//! the resource registry ([`RESOURCES`]), written once in a dialect-free model (`PathItem`)
//! and rendered in either dialect.
//!
//! The PATCH operations accept JSON and merge patches only: the generated schemas carry no
//! `x-kubernetes-patch-merge-key`, and kubectl computes strategic merge patches from a schema
//! when the server says it accepts them, so naming them would make `kubectl apply` replace
//! lists it should merge. Without them kubectl uses the patch metadata compiled into it.
//!
//! The documents depend only on compiled-in types, so they are built once per process, on
//! first use, and shared by every server in it.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet};
use k8s_openapi::api::authentication::v1::{SelfSubjectReview, TokenReview};
use k8s_openapi::api::authorization::v1::{
    LocalSubjectAccessReview, SelfSubjectAccessReview, SelfSubjectRulesReview, SubjectAccessReview,
};
use k8s_openapi::api::autoscaling::v1::Scale;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    Binding, ConfigMap, Endpoints, Event, LimitRange, Namespace, Node, Pod, ReplicationController,
    ResourceQuota, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{DeleteOptions, ListMeta, Patch, Status};
use k8s_openapi::schemars::generate::SchemaSettings;
use k8s_openapi::schemars::{JsonSchema, SchemaGenerator};
use serde_json::{Map, Value, json};
use xkube_api::resources::SubresourceInfo;
use xkube_api::{RESOURCES, ResourceInfo};

/// The version the documents' `info` names.
const INFO_VERSION: &str = "v1.33.0-xkube";

/// A kind with a generated schema.
struct Kind {
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    /// Its definition name (`io.k8s.api.core.v1.Pod`).
    name: fn() -> std::borrow::Cow<'static, str>,
    /// Adds its schema, and every schema it references, to a generator.
    add: fn(&mut SchemaGenerator),
}

impl Kind {
    fn gvk(&self) -> Gvk {
        Gvk {
            group: self.group,
            version: self.version,
            kind: self.kind,
        }
    }
}

fn add<K: JsonSchema>(g: &mut SchemaGenerator) {
    // The reference is not needed: the definitions are taken from the generator.
    let _ = g.subschema_for::<K>();
}

const fn kind<K: k8s_openapi::Resource + JsonSchema>() -> Kind {
    Kind {
        group: K::GROUP,
        version: K::VERSION,
        kind: K::KIND,
        name: K::schema_name,
        add: add::<K>,
    }
}

/// Every kind exchanged on a served path: the resources and the kinds of their subresources.
/// (A test checks that every kind of [`RESOURCES`] is here.)
static KINDS: &[Kind] = &[
    kind::<Namespace>(),
    kind::<Pod>(),
    kind::<Binding>(),
    kind::<ReplicationController>(),
    kind::<Scale>(),
    kind::<DaemonSet>(),
    kind::<Deployment>(),
    kind::<ReplicaSet>(),
    kind::<Job>(),
    kind::<CronJob>(),
    kind::<Service>(),
    kind::<Endpoints>(),
    kind::<Node>(),
    kind::<Event>(),
    kind::<Secret>(),
    kind::<ConfigMap>(),
    kind::<ServiceAccount>(),
    kind::<ResourceQuota>(),
    kind::<LimitRange>(),
    kind::<EndpointSlice>(),
    kind::<Lease>(),
    kind::<Role>(),
    kind::<ClusterRole>(),
    kind::<RoleBinding>(),
    kind::<ClusterRoleBinding>(),
    kind::<SubjectAccessReview>(),
    kind::<LocalSubjectAccessReview>(),
    kind::<SelfSubjectAccessReview>(),
    kind::<SelfSubjectRulesReview>(),
    kind::<TokenReview>(),
    kind::<SelfSubjectReview>(),
    kind::<Status>(),
];

fn find_kind(gvk: Gvk) -> Option<&'static Kind> {
    KINDS.iter().find(|k| k.gvk() == gvk)
}

/// A group, version and kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Gvk {
    group: &'static str,
    version: &'static str,
    kind: &'static str,
}

impl Gvk {
    fn of(res: &ResourceInfo) -> Self {
        Gvk {
            group: res.group,
            version: res.version,
            kind: res.kind,
        }
    }

    /// The kind exchanged on a subresource: one in the resource's group unless it names another
    /// (`autoscaling/v1` Scale).
    fn of_subresource(res: &ResourceInfo, sub: &SubresourceInfo) -> Self {
        if sub.group.is_empty() {
            Gvk {
                group: res.group,
                version: res.version,
                kind: sub.kind,
            }
        } else {
            Gvk {
                group: sub.group,
                version: sub.version,
                kind: sub.kind,
            }
        }
    }

    fn to_value(self) -> Value {
        json!({"group": self.group, "version": self.version, "kind": self.kind})
    }
}

/// The two ways of writing the same document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    /// Swagger 2.0 (`/openapi/v2`): `#/definitions/`, descriptions beside `$ref`.
    Swagger2,
    /// OpenAPI 3.0 (`/openapi/v3/...`): `#/components/schemas/`, a described reference is an
    /// `allOf` of one (3.0 ignores what sits beside `$ref`).
    OpenApi3,
}

impl Dialect {
    fn settings(self) -> SchemaSettings {
        match self {
            Dialect::Swagger2 => SchemaSettings::draft07().with(|s| {
                s.definitions_path = "/definitions".into();
                s.meta_schema = None;
                // Kubernetes' Swagger document keeps descriptions beside `$ref`.
                s.transforms.clear();
            }),
            Dialect::OpenApi3 => SchemaSettings::openapi3().with(|s| s.meta_schema = None),
        }
    }

    fn reference(self, name: &str) -> Value {
        match self {
            Dialect::Swagger2 => json!({"$ref": format!("#/definitions/{name}")}),
            Dialect::OpenApi3 => json!({"$ref": format!("#/components/schemas/{name}")}),
        }
    }

    fn described_reference(self, name: &str, description: &str) -> Value {
        match self {
            Dialect::Swagger2 => {
                json!({"$ref": format!("#/definitions/{name}"), "description": description})
            }
            Dialect::OpenApi3 => {
                json!({"allOf": [self.reference(name)], "description": description})
            }
        }
    }
}

/// The definitions of `kinds` and of everything they reference, with
/// `x-kubernetes-group-version-kind` on each kind, and a list kind for each of `lists`.
fn definitions(dialect: Dialect, kinds: &[&Kind], lists: &[&Kind]) -> Map<String, Value> {
    let mut g = SchemaGenerator::new(dialect.settings());
    add::<DeleteOptions>(&mut g);
    add::<ListMeta>(&mut g);
    add::<Patch>(&mut g);
    for k in kinds.iter().chain(lists) {
        (k.add)(&mut g);
    }
    let mut defs = g.take_definitions(true);
    for k in kinds.iter().chain(lists) {
        if let Some(Value::Object(s)) = defs.get_mut((k.name)().as_ref()) {
            s.insert(
                "x-kubernetes-group-version-kind".into(),
                json!([k.gvk().to_value()]),
            );
        }
    }
    for k in lists {
        let name = (k.name)();
        let list = list_definition(dialect, k, &name, &defs);
        defs.insert(format!("{name}List"), list);
    }
    if dialect == Dialect::Swagger2 {
        // Swagger has no schema without a type: IntOrString and Quantity are strings there.
        for s in defs.values_mut().filter_map(Value::as_object_mut) {
            if s.contains_key("x-kubernetes-int-or-string") && !s.contains_key("type") {
                s.insert("type".into(), json!("string"));
            }
        }
    }
    defs
}

/// The list kind of `k` (`PodList`), whose definition is `name`.
fn list_definition(dialect: Dialect, k: &Kind, name: &str, defs: &Map<String, Value>) -> Value {
    let list_meta = ListMeta::schema_name();
    let item = &defs.get(name).unwrap_or(&Value::Null)["properties"];
    json!({
        "description": format!("{}List is a list of {} objects.", k.kind, k.kind),
        "type": "object",
        "properties": {
            "apiVersion": item["apiVersion"],
            "items": {
                "description": format!("List of {} objects.", k.kind),
                "type": "array",
                "items": dialect.reference(name),
            },
            "kind": item["kind"],
            "metadata": dialect.described_reference(
                &list_meta,
                "Standard list metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds",
            ),
        },
        "required": ["items"],
        "x-kubernetes-group-version-kind": [{
            "group": k.group, "version": k.version, "kind": format!("{}List", k.kind),
        }],
    })
}

/// A query or path parameter.
#[derive(Debug, Clone, Copy)]
struct Param {
    name: &'static str,
    ty: &'static str,
    description: &'static str,
}

const fn param(name: &'static str, ty: &'static str, description: &'static str) -> Param {
    Param {
        name,
        ty,
        description,
    }
}

const DRY_RUN: Param = param(
    "dryRun",
    "string",
    "When present, indicates that modifications should not be persisted. Valid values are: All (process all dry run stages).",
);
const FIELD_MANAGER: Param = param(
    "fieldManager",
    "string",
    "A name associated with the actor or entity that is making these changes.",
);
const FIELD_VALIDATION: Param = param(
    "fieldValidation",
    "string",
    "How the server handles objects with unknown or duplicate fields: Ignore, Warn (the default) or Strict.",
);
const WRITE: &[Param] = &[DRY_RUN, FIELD_MANAGER, FIELD_VALIDATION];
const FILTERS: &[Param] = &[
    param(
        "continue",
        "string",
        "The continue token of a previous list call, to retrieve the next page.",
    ),
    param(
        "fieldSelector",
        "string",
        "A selector to restrict the list of returned objects by their fields. Defaults to everything.",
    ),
    param(
        "labelSelector",
        "string",
        "A selector to restrict the list of returned objects by their labels. Defaults to everything.",
    ),
    param(
        "limit",
        "integer",
        "The maximum number of responses to return for a list call.",
    ),
    param(
        "resourceVersion",
        "string",
        "Constrains which resource versions the request may be served from.",
    ),
    param(
        "resourceVersionMatch",
        "string",
        "How resourceVersion is applied to list calls: Exact or NotOlderThan.",
    ),
    param(
        "timeoutSeconds",
        "integer",
        "Timeout for the list/watch call, regardless of any activity or inactivity.",
    ),
];
const WATCH: &[Param] = &[
    param(
        "allowWatchBookmarks",
        "boolean",
        "Requests watch events with type BOOKMARK.",
    ),
    param(
        "sendInitialEvents",
        "boolean",
        "With watch, starts the stream with synthetic events for the current state of the collection.",
    ),
    param(
        "watch",
        "boolean",
        "Watch for changes to the described resources and return them as a stream of add, update, and remove notifications.",
    ),
];
const DELETE: &[Param] = &[
    DRY_RUN,
    param(
        "gracePeriodSeconds",
        "integer",
        "The duration in seconds before the object should be deleted.",
    ),
    param(
        "orphanDependents",
        "boolean",
        "Deprecated: use propagationPolicy. Whether the dependent objects should be orphaned.",
    ),
    param(
        "propagationPolicy",
        "string",
        "Whether and how garbage collection will be performed: Orphan, Background or Foreground.",
    ),
];
const NAMESPACE: Param = param(
    "namespace",
    "string",
    "object name and auth scope, such as for teams and projects",
);
const PRETTY: Param = param(
    "pretty",
    "string",
    "If 'true', then the output is pretty printed.",
);

/// What an operation takes in its body.
#[derive(Debug, Clone)]
enum Body {
    None,
    /// An object of this definition.
    Object(String),
    /// A JSON or merge patch.
    Patch,
    /// `DeleteOptions`.
    DeleteOptions,
}

/// What an operation answers with.
#[derive(Debug, Clone)]
enum Reply {
    /// An object of this definition.
    Object(String),
    /// A `Status`.
    Status,
    /// Text (logs) or a stream (exec, attach, port-forward).
    Text,
}

/// One operation, before it is written in either dialect.
#[derive(Debug, Clone)]
struct Operation {
    /// Lower-case HTTP method (`get`).
    method: &'static str,
    id: String,
    description: String,
    /// `x-kubernetes-action` (`list`, `post`, `connect`, ...).
    action: &'static str,
    gvk: Gvk,
    query: Vec<Param>,
    body: Body,
    reply: Reply,
    /// The HTTP codes of a success.
    codes: &'static [&'static str],
}

/// One path with its operations.
#[derive(Debug, Clone)]
struct PathItem {
    path: String,
    /// Path parameters (`namespace`, `name`).
    params: Vec<Param>,
    ops: Vec<Operation>,
}

fn upper_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// `Core`, `Apps`, `RbacAuthorization`: the group in operation ids.
fn group_id(group: &str) -> String {
    if group.is_empty() {
        return "Core".into();
    }
    group
        .trim_end_matches(".k8s.io")
        .split('.')
        .map(upper_first)
        .collect()
}

/// `core_v1`, `rbacAuthorization_v1`: the operations' tag.
fn tag(group: &str, version: &str) -> String {
    let g = group_id(group);
    let mut c = g.chars();
    let g: String = match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => g,
    };
    format!("{g}_{version}")
}

/// The paths and operations of one group version, from the registry.
fn paths(group: &str, version: &str) -> Vec<PathItem> {
    let root = if group.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{group}/{version}")
    };
    let gv_id = format!("{}{}", group_id(group), upper_first(version));
    let mut out = Vec::new();
    for r in xkube_api::resources::in_group_version(group, version) {
        let gvk = Gvk::of(r);
        let Some(schema) = find_kind(gvk).map(|k| (k.name)().into_owned()) else {
            continue;
        };
        let scope = if r.namespaced { "Namespaced" } else { "" };
        let kind = r.kind;
        let can = |verb: &str| r.verbs.contains(&verb);
        let op = |method, verb: &str, action, description: String| Operation {
            method,
            id: format!("{verb}{gv_id}{scope}{kind}"),
            description,
            action,
            gvk,
            query: Vec::new(),
            body: Body::None,
            reply: Reply::Object(schema.clone()),
            codes: &["200"],
        };
        let (collection, mut params) = if r.namespaced {
            (
                format!("{root}/namespaces/{{namespace}}/{}", r.plural),
                vec![NAMESPACE],
            )
        } else {
            (format!("{root}/{}", r.plural), Vec::new())
        };
        params.push(PRETTY);

        let mut ops = Vec::new();
        if can("list") {
            ops.push(Operation {
                query: [FILTERS, WATCH].concat(),
                reply: Reply::Object(format!("{schema}List")),
                ..op(
                    "get",
                    "list",
                    "list",
                    format!("list or watch objects of kind {kind}"),
                )
            });
        }
        if can("create") {
            ops.push(Operation {
                query: WRITE.to_vec(),
                body: Body::Object(schema.clone()),
                codes: &["200", "201", "202"],
                ..op("post", "create", "post", format!("create a {kind}"))
            });
        }
        if can("deletecollection") {
            ops.push(Operation {
                id: format!("deleteCollection{gv_id}{scope}{kind}"),
                query: [DELETE, FILTERS].concat(),
                body: Body::DeleteOptions,
                reply: Reply::Status,
                ..op(
                    "delete",
                    "delete",
                    "deletecollection",
                    format!("delete collection of {kind}"),
                )
            });
        }
        if !ops.is_empty() {
            out.push(PathItem {
                path: collection.clone(),
                params: params.clone(),
                ops,
            });
        }
        if r.namespaced && can("list") {
            out.push(PathItem {
                path: format!("{root}/{}", r.plural),
                params: vec![PRETTY],
                ops: vec![Operation {
                    id: format!("list{gv_id}{kind}ForAllNamespaces"),
                    query: [FILTERS, WATCH].concat(),
                    reply: Reply::Object(format!("{schema}List")),
                    ..op(
                        "get",
                        "list",
                        "list",
                        format!("list or watch objects of kind {kind}"),
                    )
                }],
            });
        }

        let item = format!("{collection}/{{name}}");
        let mut item_params = vec![param("name", "string", "name of the object")];
        item_params.extend(params.iter().copied());
        let mut ops = Vec::new();
        if can("get") {
            ops.push(op(
                "get",
                "read",
                "get",
                format!("read the specified {kind}"),
            ));
        }
        if can("update") {
            ops.push(Operation {
                query: WRITE.to_vec(),
                body: Body::Object(schema.clone()),
                codes: &["200", "201"],
                ..op(
                    "put",
                    "replace",
                    "put",
                    format!("replace the specified {kind}"),
                )
            });
        }
        if can("patch") {
            ops.push(Operation {
                query: WRITE.to_vec(),
                body: Body::Patch,
                codes: &["200", "201"],
                ..op(
                    "patch",
                    "patch",
                    "patch",
                    format!("partially update the specified {kind}"),
                )
            });
        }
        if can("delete") {
            ops.push(Operation {
                query: DELETE.to_vec(),
                body: Body::DeleteOptions,
                reply: Reply::Status,
                codes: &["200", "202"],
                ..op("delete", "delete", "delete", format!("delete a {kind}"))
            });
        }
        if !ops.is_empty() {
            out.push(PathItem {
                path: item.clone(),
                params: item_params.clone(),
                ops,
            });
        }

        for s in r.subresources {
            let ops = subresource_operations(r, s, &format!("{gv_id}{scope}{kind}"));
            if !ops.is_empty() {
                out.push(PathItem {
                    path: format!("{item}/{}", s.name),
                    params: item_params.clone(),
                    ops,
                });
            }
        }
    }
    out
}

/// The operations of one subresource; `id` is the operation id after its verb
/// (`CoreV1NamespacedPod`).
fn subresource_operations(r: &ResourceInfo, s: &SubresourceInfo, id: &str) -> Vec<Operation> {
    let gvk = Gvk::of_subresource(r, s);
    // Logs are text; exec, attach and port-forward upgrade to a stream.
    let streams = matches!(s.name, "log" | "exec" | "attach" | "portforward");
    let schema = find_kind(gvk).map(|k| (k.name)().into_owned());
    let reply = match &schema {
        Some(n) if !streams => Reply::Object(n.clone()),
        _ => Reply::Text,
    };
    let sub = upper_first(s.name);
    let what = if s.kind == r.kind { s.name } else { s.kind };
    let mut ops = Vec::new();
    for verb in s.verbs {
        let (method, id_verb, action, doing) = match (*verb, streams) {
            ("get", true) if s.name == "log" => ("get", "read", "get", "read"),
            ("get", true) => ("get", "connectGet", "connect", "connect GET requests to"),
            ("create", true) => ("post", "connectPost", "connect", "connect POST requests to"),
            ("get", false) => ("get", "read", "get", "read"),
            ("update", false) => ("put", "replace", "put", "replace"),
            ("patch", false) => ("patch", "patch", "patch", "partially update"),
            ("create", false) => ("post", "create", "post", "create"),
            _ => continue,
        };
        let writes = !streams && method != "get";
        ops.push(Operation {
            method,
            id: format!("{id_verb}{id}{sub}"),
            description: format!("{doing} {what} of the specified {}", r.kind),
            action,
            gvk,
            query: if writes { WRITE.to_vec() } else { Vec::new() },
            body: match (method, &schema) {
                ("patch", _) => Body::Patch,
                ("put" | "post", Some(n)) if !streams => Body::Object(n.clone()),
                _ => Body::None,
            },
            reply: reply.clone(),
            codes: match method {
                "post" if writes => &["200", "201", "202"],
                "put" | "patch" => &["200", "201"],
                _ => &["200"],
            },
        });
    }
    ops
}

/// The media types of replies with objects.
const PRODUCES: &[&str] = &["application/json", "application/yaml"];
/// The patch types the PATCH operations name (see the module documentation).
const PATCHES: &[&str] = &[
    "application/json-patch+json",
    "application/merge-patch+json",
];

fn status_name() -> String {
    Status::schema_name().into_owned()
}

fn reply_schema(dialect: Dialect, reply: &Reply) -> Value {
    match reply {
        Reply::Object(n) => dialect.reference(n),
        Reply::Status => dialect.reference(&status_name()),
        Reply::Text => json!({"type": "string"}),
    }
}

fn render_param(dialect: Dialect, p: &Param, location: &str) -> Value {
    let mut v = json!({
        "name": p.name,
        "in": location,
        "description": p.description,
        "uniqueItems": true,
    });
    if location == "path" {
        v["required"] = json!(true);
    }
    match dialect {
        Dialect::Swagger2 => v["type"] = json!(p.ty),
        Dialect::OpenApi3 => v["schema"] = json!({"type": p.ty}),
    }
    v
}

fn render_operation(dialect: Dialect, op: &Operation, tag: &str) -> Value {
    let mut params: Vec<Value> = op
        .query
        .iter()
        .map(|p| render_param(dialect, p, "query"))
        .collect();
    let body_schema = match &op.body {
        Body::None => None,
        Body::Object(n) => Some(dialect.reference(n)),
        Body::Patch => Some(
            dialect
                .reference(&k8s_openapi::apimachinery::pkg::apis::meta::v1::Patch::schema_name()),
        ),
        Body::DeleteOptions => Some(dialect.reference(&DeleteOptions::schema_name())),
    };
    let consumes: &[&str] = match op.body {
        Body::Patch => PATCHES,
        _ => &["*/*"],
    };
    let produces: &[&str] = match op.reply {
        Reply::Text => &["*/*"],
        _ => PRODUCES,
    };
    let schema = reply_schema(dialect, &op.reply);
    let mut responses = Map::new();
    let mut v = json!({
        "tags": [tag],
        "description": op.description,
        "operationId": op.id,
        "x-kubernetes-action": op.action,
        "x-kubernetes-group-version-kind": op.gvk.to_value(),
    });
    match dialect {
        Dialect::Swagger2 => {
            if let Some(s) = body_schema {
                params.push(json!({"name": "body", "in": "body", "required": !matches!(op.body, Body::DeleteOptions), "schema": s}));
            }
            for c in op.codes {
                responses.insert((*c).into(), json!({"description": "OK", "schema": schema}));
            }
            v["consumes"] = json!(consumes);
            v["produces"] = json!(produces);
            v["schemes"] = json!(["https"]);
        }
        Dialect::OpenApi3 => {
            if let Some(s) = body_schema {
                let content: Map<String, Value> = consumes
                    .iter()
                    .map(|c| ((*c).to_string(), json!({"schema": s})))
                    .collect();
                v["requestBody"] = json!({
                    "content": content,
                    "required": !matches!(op.body, Body::DeleteOptions),
                });
            }
            let content: Map<String, Value> = produces
                .iter()
                .map(|c| ((*c).to_string(), json!({"schema": schema})))
                .collect();
            for c in op.codes {
                responses.insert(
                    (*c).into(),
                    json!({"description": "OK", "content": content}),
                );
            }
        }
    }
    responses.insert("401".into(), json!({"description": "Unauthorized"}));
    v["parameters"] = Value::Array(params);
    v["responses"] = Value::Object(responses);
    v
}

fn render_paths(dialect: Dialect, items: &[PathItem], tag: &str, out: &mut Map<String, Value>) {
    for item in items {
        let mut p = Map::new();
        for op in &item.ops {
            p.insert(op.method.into(), render_operation(dialect, op, tag));
        }
        let params: Vec<Value> = item
            .params
            .iter()
            .map(|x| {
                let location = if x.name == PRETTY.name {
                    "query"
                } else {
                    "path"
                };
                render_param(dialect, x, location)
            })
            .collect();
        p.insert("parameters".into(), Value::Array(params));
        out.insert(item.path.clone(), Value::Object(p));
    }
}

/// The group versions served, in registry order.
fn group_versions() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for r in RESOURCES {
        if !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    out
}

/// The kinds a group version's document describes: its resources' and their subresources'.
fn kinds_of(group: &str, version: &str) -> (Vec<&'static Kind>, Vec<&'static Kind>) {
    let mut kinds: Vec<&Kind> = Vec::new();
    let mut lists: Vec<&Kind> = Vec::new();
    let push = |k: &'static Kind, v: &mut Vec<&'static Kind>| {
        if !v.iter().any(|x| std::ptr::eq(*x, k)) {
            v.push(k);
        }
    };
    for r in xkube_api::resources::in_group_version(group, version) {
        let Some(k) = find_kind(Gvk::of(r)) else {
            continue;
        };
        if r.verbs.contains(&"list") {
            push(k, &mut lists);
        } else {
            push(k, &mut kinds);
        }
        for s in r.subresources {
            if let Some(k) = find_kind(Gvk::of_subresource(r, s)) {
                push(k, &mut kinds);
            }
        }
    }
    if let Some(k) = find_kind(Gvk {
        group: "",
        version: "v1",
        kind: "Status",
    }) {
        push(k, &mut kinds);
    }
    kinds.retain(|k| !lists.iter().any(|l| std::ptr::eq(*l, *k)));
    (kinds, lists)
}

/// The OpenAPI v3 document of one group version.
fn v3_document(group: &str, version: &str) -> Value {
    let (kinds, lists) = kinds_of(group, version);
    let mut paths_out = Map::new();
    render_paths(
        Dialect::OpenApi3,
        &paths(group, version),
        &tag(group, version),
        &mut paths_out,
    );
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": INFO_VERSION},
        "paths": paths_out,
        "components": {
            "schemas": definitions(Dialect::OpenApi3, &kinds, &lists),
            "securitySchemes": {
                "BearerToken": {"type": "apiKey", "description": "Bearer Token authentication", "name": "authorization", "in": "header"},
            },
        },
        "security": [{"BearerToken": []}],
    })
}

/// The Swagger 2.0 document of every group version.
fn v2_document() -> Value {
    let mut kinds: Vec<&Kind> = Vec::new();
    let mut lists: Vec<&Kind> = Vec::new();
    let mut paths_out = Map::new();
    for (g, v) in group_versions() {
        let (k, l) = kinds_of(g, v);
        for k in k {
            if !kinds.iter().any(|x| std::ptr::eq(*x, k)) {
                kinds.push(k);
            }
        }
        lists.extend(l);
        render_paths(Dialect::Swagger2, &paths(g, v), &tag(g, v), &mut paths_out);
    }
    kinds.retain(|k| !lists.iter().any(|l| std::ptr::eq(*l, *k)));
    json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": INFO_VERSION},
        "paths": paths_out,
        "definitions": definitions(Dialect::Swagger2, &kinds, &lists),
        "securityDefinitions": {
            "BearerToken": {"type": "apiKey", "description": "Bearer Token authentication", "name": "authorization", "in": "header"},
        },
        "security": [{"BearerToken": []}],
    })
}

/// A serialized document and the hash of its bytes.
#[derive(Debug, Clone)]
pub struct Document {
    /// The JSON bytes.
    pub body: bytes::Bytes,
    /// Upper-case hex SHA-512 of `body`: the `hash` of its v3 URL and its ETag.
    pub hash: String,
}

impl Document {
    fn new(v: &Value) -> Self {
        // `Value`'s `Display` is its JSON and cannot fail.
        let body = bytes::Bytes::from(v.to_string());
        let digest = ring::digest::digest(&ring::digest::SHA512, &body);
        let hash = digest.as_ref().iter().map(|b| format!("{b:02X}")).collect();
        Document { body, hash }
    }

    /// The quoted ETag of the document.
    pub fn etag(&self) -> String {
        format!("\"{}\"", self.hash)
    }
}

/// Every OpenAPI document the server serves.
#[derive(Debug)]
pub struct Documents {
    /// `/openapi/v2`.
    pub v2: Document,
    /// `/openapi/v3/{key}`, keyed `api/v1`, `apis/apps/v1`, ...
    pub v3: BTreeMap<String, Document>,
    /// `/openapi/v3`: each group version's `serverRelativeURL` with its hash.
    pub v3_index: Document,
}

/// The key of a group version under `/openapi/v3/`.
pub fn v3_key(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// Builds every document (about a second in a debug build: call it off the async workers).
pub fn build() -> Documents {
    let v3: BTreeMap<String, Document> = group_versions()
        .into_iter()
        .map(|(g, v)| (v3_key(g, v), Document::new(&v3_document(g, v))))
        .collect();
    let index: Map<String, Value> = v3
        .iter()
        .map(|(k, d)| {
            (
                k.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{k}?hash={}", d.hash)}),
            )
        })
        .collect();
    Documents {
        v2: Document::new(&v2_document()),
        v3_index: Document::new(&json!({"paths": index})),
        v3,
    }
}

static DOCUMENTS: OnceLock<Documents> = OnceLock::new();

/// The documents, built on first use on a blocking thread.
pub async fn documents() -> &'static Documents {
    if let Some(d) = DOCUMENTS.get() {
        return d;
    }
    match tokio::task::spawn_blocking(|| DOCUMENTS.get_or_init(build)).await {
        Ok(d) => d,
        // The blocking pool is shutting down: build here rather than fail the request.
        Err(_) => DOCUMENTS.get_or_init(build),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gvk_of(schema: &Value) -> &Value {
        &schema["x-kubernetes-group-version-kind"][0]
    }

    #[test]
    fn every_served_kind_has_a_schema_with_its_group_version_kind_in_v2_and_v3() {
        let docs = build();
        let v2: Value = serde_json::from_slice(&docs.v2.body).expect("v2 is JSON");
        for r in RESOURCES {
            let want = Gvk::of(r).to_value();
            let k = find_kind(Gvk::of(r)).unwrap_or_else(|| panic!("{} has no schema", r.kind));
            let name = (k.name)();
            assert_eq!(
                gvk_of(&v2["definitions"][name.as_ref()]),
                &want,
                "v2 {name}"
            );
            let v3: Value = serde_json::from_slice(&docs.v3[&v3_key(r.group, r.version)].body)
                .expect("v3 is JSON");
            let schemas = &v3["components"]["schemas"];
            assert_eq!(gvk_of(&schemas[name.as_ref()]), &want, "v3 {name}");
            if r.verbs.contains(&"list") {
                let list = format!("{name}List");
                assert_eq!(gvk_of(&schemas[&list])["kind"], format!("{}List", r.kind));
                assert_eq!(
                    gvk_of(&v2["definitions"][&list])["kind"],
                    format!("{}List", r.kind)
                );
            }
        }
    }

    #[test]
    fn references_resolve_within_each_document() {
        fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(r)) = m.get("$ref") {
                        out.push(r);
                    }
                    m.values().for_each(|v| refs(v, out));
                }
                Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
                _ => {}
            }
        }
        let docs = build();
        let v2: Value = serde_json::from_slice(&docs.v2.body).expect("v2 is JSON");
        let mut found = Vec::new();
        refs(&v2, &mut found);
        assert!(found.len() > 100);
        for r in found {
            let name = r
                .strip_prefix("#/definitions/")
                .unwrap_or_else(|| panic!("{r}"));
            assert!(v2["definitions"][name].is_object(), "v2 {r}");
        }
        for (key, d) in &docs.v3 {
            let v3: Value = serde_json::from_slice(&d.body).expect("v3 is JSON");
            let mut found = Vec::new();
            refs(&v3, &mut found);
            for r in found {
                let name = r
                    .strip_prefix("#/components/schemas/")
                    .unwrap_or_else(|| panic!("{r}"));
                assert!(v3["components"]["schemas"][name].is_object(), "{key} {r}");
            }
        }
    }

    #[test]
    fn patch_operations_take_field_validation_and_no_strategic_merge_patch() {
        let docs = build();
        let v3: Value = serde_json::from_slice(&docs.v3["api/v1"].body).expect("v3 is JSON");
        let patch = &v3["paths"]["/api/v1/namespaces/{namespace}/pods/{name}"]["patch"];
        assert_eq!(patch["x-kubernetes-group-version-kind"]["kind"], "Pod");
        let params = patch["parameters"].as_array().expect("parameters");
        assert!(
            params
                .iter()
                .any(|p| p["name"] == "fieldValidation" && p["in"] == "query")
        );
        let content = patch["requestBody"]["content"]
            .as_object()
            .expect("content");
        assert!(content.contains_key("application/merge-patch+json"));
        assert!(!content.contains_key("application/strategic-merge-patch+json"));
        let v2: Value = serde_json::from_slice(&docs.v2.body).expect("v2 is JSON");
        let patch =
            &v2["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(patch["consumes"], json!(PATCHES));
        assert_eq!(patch["operationId"], "patchAppsV1NamespacedDeployment");
    }

    #[test]
    fn described_references_follow_each_dialect() {
        let docs = build();
        let v3: Value = serde_json::from_slice(&docs.v3["api/v1"].body).expect("v3 is JSON");
        let spec = &v3["components"]["schemas"]["io.k8s.api.core.v1.Pod"]["properties"]["spec"];
        assert_eq!(
            spec["allOf"][0]["$ref"],
            "#/components/schemas/io.k8s.api.core.v1.PodSpec"
        );
        assert!(spec["description"].is_string());
        let v2: Value = serde_json::from_slice(&docs.v2.body).expect("v2 is JSON");
        let spec = &v2["definitions"]["io.k8s.api.core.v1.Pod"]["properties"]["spec"];
        assert_eq!(spec["$ref"], "#/definitions/io.k8s.api.core.v1.PodSpec");
        assert!(spec["description"].is_string());
        let port = &v3["components"]["schemas"]["io.k8s.api.core.v1.ContainerPort"];
        assert_eq!(port["properties"]["containerPort"]["type"], "integer");
    }

    #[test]
    fn the_index_names_each_group_version_with_its_hash() {
        let docs = build();
        let index: Value = serde_json::from_slice(&docs.v3_index.body).expect("index is JSON");
        let url = index["paths"]["apis/apps/v1"]["serverRelativeURL"]
            .as_str()
            .expect("apps/v1");
        assert_eq!(
            url,
            format!(
                "/openapi/v3/apis/apps/v1?hash={}",
                docs.v3["apis/apps/v1"].hash
            )
        );
        assert_ne!(docs.v3["apis/apps/v1"].hash, docs.v3["api/v1"].hash);
        assert_eq!(
            build().v3["api/v1"].hash,
            docs.v3["api/v1"].hash,
            "deterministic"
        );
    }
}
