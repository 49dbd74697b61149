//! Property: a random patch (merge, strategic merge or JSON patch) sent to a valid object
//! either succeeds and leaves an object its kind decodes and validates, with its name and uid,
//! or is refused with a 4xx and leaves the stored bytes and revision as they were. Never a 5xx.

mod common;

use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Map, Value, json};
use xkube_api::{ResourceInfo, meta, typed};

const MERGE: &str = "application/merge-patch+json";
const STRATEGIC: &str = "application/strategic-merge-patch+json";
const JSON_PATCH: &str = "application/json-patch+json";

/// Field names of the seeded kinds, Kubernetes' patch directives, and a few strangers.
const KEYS: &[&str] = &[
    "metadata",
    "name",
    "namespace",
    "uid",
    "labels",
    "annotations",
    "resourceVersion",
    "finalizers",
    "data",
    "stringData",
    "spec",
    "status",
    "ports",
    "port",
    "targetPort",
    "nodePort",
    "protocol",
    "type",
    "clusterIP",
    "selector",
    "replicas",
    "template",
    "containers",
    "image",
    "kind",
    "apiVersion",
    "app",
    "k",
    "$patch",
    "$retainKeys",
    "x",
];

const STRINGS: &[&str] = &[
    "",
    "v",
    "web",
    "nginx",
    "NodePort",
    "ClusterIP",
    "10.96.0.50",
    "1.2.3.4",
    "TCP",
    "replace",
    "delete",
    "merge",
    "Bad_Name!",
    "default",
    "other",
    "v1",
    "Secret",
];

/// The objects patched: (group, plural, the object created first).
fn targets() -> Vec<(&'static ResourceInfo, Value)> {
    let find = |g, v, p| xkube_api::resources::find(g, v, p).expect("resource served");
    let containers = json!([{"name": "c", "image": "nginx", "ports": [{"containerPort": 80}]}]);
    vec![
        (
            find("", "v1", "configmaps"),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "p", "labels": {"app": "web"}},
                   "data": {"k": "v", "x": "y"}}),
        ),
        (
            find("", "v1", "secrets"),
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "p"},
                   "type": "Opaque", "data": {"k": "dg=="}}),
        ),
        (
            find("", "v1", "services"),
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "p"},
                   "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80}]}}),
        ),
        (
            find("", "v1", "pods"),
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"app": "web"}},
                   "spec": {"containers": containers}}),
        ),
        (
            find("", "v1", "replicationcontrollers"),
            json!({"apiVersion": "v1", "kind": "ReplicationController", "metadata": {"name": "p"},
                   "spec": {"replicas": 1, "selector": {"app": "web"},
                            "template": {"metadata": {"labels": {"app": "web"}},
                                         "spec": {"containers": containers}}}}),
        ),
        (
            find("apps", "v1", "daemonsets"),
            json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "p"},
                   "spec": {"selector": {"matchLabels": {"app": "web"}},
                            "template": {"metadata": {"labels": {"app": "web"}},
                                         "spec": {"containers": containers}}}}),
        ),
    ]
}

fn item_path(res: &ResourceInfo) -> String {
    let root = if res.group.is_empty() {
        "/api/v1".to_string()
    } else {
        format!("/apis/{}/{}", res.group, res.version)
    };
    format!("{root}/namespaces/default/{}/p", res.plural)
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        prop_oneof![
            Just(0i64),
            Just(-1),
            Just(80),
            Just(70_000),
            Just(1 << 40),
            1i64..40_000
        ]
        .prop_map(Value::from),
        prop::sample::select(STRINGS).prop_map(Value::from),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::btree_map(prop::sample::select(KEYS), inner, 0..4).prop_map(|m| {
                Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            }),
        ]
    })
}

/// Mostly objects (what merge patches are), sometimes anything.
fn merge_patch() -> impl Strategy<Value = Value> {
    prop_oneof![
        9 => prop::collection::btree_map(prop::sample::select(KEYS), value(), 1..4).prop_map(|m| {
            Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect::<Map<_, _>>())
        }),
        1 => value(),
    ]
}

fn pointer() -> impl Strategy<Value = String> {
    const SEGMENTS: &[&str] = &[
        "metadata",
        "labels",
        "name",
        "uid",
        "data",
        "spec",
        "ports",
        "0",
        "1",
        "-",
        "port",
        "containers",
        "image",
        "kind",
        "apiVersion",
        "k",
        "selector",
        "app",
        "replicas",
    ];
    prop::collection::vec(prop::sample::select(SEGMENTS), 0..5)
        .prop_map(|segs| segs.iter().map(|s| format!("/{s}")).collect::<String>())
}

fn json_patch() -> impl Strategy<Value = Value> {
    let op = (
        prop::sample::select(&["add", "remove", "replace", "test", "move", "copy", "bogus"][..]),
        pointer(),
        pointer(),
        value(),
    )
        .prop_map(
            |(op, path, from, value)| json!({"op": op, "path": path, "from": from, "value": value}),
        );
    prop_oneof![
        9 => prop::collection::vec(op, 1..4).prop_map(Value::Array),
        1 => value(),
    ]
}

fn patch() -> impl Strategy<Value = (&'static str, Value)> {
    prop_oneof![
        merge_patch().prop_map(|p| (MERGE, p)),
        merge_patch().prop_map(|p| (STRATEGIC, p)),
        json_patch().prop_map(|p| (JSON_PATCH, p)),
    ]
}

async fn check(
    api: &Api,
    tally: &std::sync::Mutex<std::collections::BTreeMap<u16, usize>>,
    res: &'static ResourceInfo,
    ctype: &'static str,
    patch: Value,
) -> Result<(), TestCaseError> {
    let key = res.key(Some("default"), "p");
    let store = &api.server.store;
    let before = store
        .get(&key)
        .await
        .expect("store")
        .expect("object stored");
    let before_obj: Value = serde_json::from_slice(&before.value).expect("stored JSON");
    let (code, answer) = api.patch(&item_path(res), ctype, &patch).await;
    let after = store
        .get(&key)
        .await
        .expect("store")
        .expect("object still stored");
    if let Ok(mut t) = tally.lock() {
        *t.entry(code).or_default() += 1;
    }
    prop_assert!(code < 500, "{ctype} {patch}: {code} {answer}");
    if (200..300).contains(&code) {
        let stored: Value = serde_json::from_slice(&after.value).expect("stored JSON");
        let prepared = typed::prepare(res.kind, stored.clone(), false);
        prop_assert!(
            prepared.is_ok(),
            "{ctype} {patch}: stored {stored} does not decode: {prepared:?}"
        );
        let errors = prepared.map(|p| p.errors).unwrap_or_default();
        prop_assert!(
            errors.is_empty(),
            "{ctype} {patch}: stored {stored} is invalid: {}",
            errors.aggregate_message()
        );
        prop_assert_eq!(meta::name(&stored), "p");
        prop_assert_eq!(meta::namespace(&stored), "default");
        prop_assert_eq!(meta::uid(&stored), meta::uid(&before_obj));
        prop_assert_eq!(stored["kind"].as_str(), Some(res.kind));
        prop_assert!(
            typed::prepare(res.kind, answer.clone(), false).is_ok(),
            "answer {answer}"
        );
    } else {
        prop_assert!(
            (400..500).contains(&code),
            "{ctype} {patch}: {code} {answer}"
        );
        prop_assert_eq!(answer["kind"].as_str(), Some("Status"), "{}", answer);
        prop_assert!(
            after == before,
            "{ctype} {patch} was refused ({code}) but the object changed:\n{}\n{}",
            String::from_utf8_lossy(&before.value),
            String::from_utf8_lossy(&after.value)
        );
    }
    Ok(())
}

#[test]
fn random_patches_leave_a_valid_object_or_change_nothing() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let targets = targets();
    let api = rt.block_on(async {
        let api = start().await;
        for (res, obj) in &targets {
            let path = item_path(res);
            let collection = path.trim_end_matches("/p");
            let (code, s) = api.post(collection, obj).await;
            assert_eq!(code, 201, "{}: {s}", res.kind);
        }
        api
    });
    let kinds: Vec<&'static ResourceInfo> = targets.iter().map(|(r, _)| *r).collect();
    let tally = std::sync::Mutex::new(std::collections::BTreeMap::new());
    let mut runner = TestRunner::new(Config {
        cases: 256,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(
        &(prop::sample::select(kinds), patch()),
        |(res, (ctype, patch))| rt.block_on(check(&api, &tally, res, ctype, patch)),
    );
    rt.block_on(api.stop());
    if let Err(e) = result {
        panic!("{e}");
    }
    let tally = tally.into_inner().unwrap_or_default();
    println!("random patches by answer: {tally:?}");
    // The generator reaches both outcomes (the property is not checked on one side only).
    let accepted: usize = tally.range(200..300).map(|(_, n)| n).sum();
    let refused: usize = tally.range(400..500).map(|(_, n)| n).sum();
    assert!(accepted > 0 && refused > 0, "{tally:?}");
}
