//! `apply -f`: create, or a three-way strategic merge of the last applied configuration (the
//! `kubectl.kubernetes.io/last-applied-configuration` annotation), the new configuration and
//! the live object. An empty patch means `unchanged`.

use clap::Args;
use serde_json::{Map, Value, json};
use xkube_client::{Api, DynamicObject, Patch};

use crate::cmds::{Errors, FileArgs, docs_with_resources, object_namespace};
use crate::manifest::read_all;
use crate::output::message;
use crate::{Global, describe_error};

/// The annotation holding what was last applied.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// `apply` flags.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    files: FileArgs,
    /// Output format (`name`).
    #[arg(short = 'o', long)]
    output: Option<String>,
}

/// Stores the object itself in its last-applied annotation, byte for byte as kubectl does
/// (keys sorted, the namespace filled in, `annotations` without the annotation itself, a
/// trailing newline), so kubectl and xkubectl agree on what was applied.
pub fn set_last_applied(obj: &mut Value, namespace: Option<&str>) -> anyhow::Result<()> {
    if let Some(ns) = namespace {
        xkube_api::meta::set(obj, "namespace", Value::String(ns.to_string()));
    }
    let meta = xkube_api::meta::metadata_mut(obj);
    let ann = meta
        .entry("annotations")
        .or_insert_with(|| Value::Object(Map::new()));
    if !ann.is_object() {
        *ann = Value::Object(Map::new());
    }
    if let Some(a) = ann.as_object_mut() {
        a.remove(LAST_APPLIED);
    }
    let text = serde_json::to_string(&*obj)?;
    if let Some(a) = xkube_api::meta::metadata_mut(obj)
        .get_mut("annotations")
        .and_then(Value::as_object_mut)
    {
        a.insert(LAST_APPLIED.to_string(), Value::String(text + "\n"));
    }
    Ok(())
}

/// Whether `modified` (a list from the configuration) already holds in `live`: same length and
/// every item contained (objects: every configured field equal; others: equal).
fn list_holds(modified: &[Value], live: &[Value]) -> bool {
    modified.len() == live.len()
        && modified.iter().zip(live).all(|(m, l)| match (m, l) {
            (Value::Object(m), Value::Object(l)) => diff_object(None, m, l).is_empty(),
            _ => m == l || loosely_equal(m, l),
        })
}

/// The strategic-merge key of a list field (as in `xkube_api::patch`), for lists of objects.
fn merge_key(field: &str, modified: &[Value], live: &[Value]) -> Option<&'static str> {
    if !modified.iter().chain(live).all(Value::is_object) {
        return None;
    }
    match field {
        "containers" | "initContainers" | "env" | "volumes" | "imagePullSecrets" | "secrets" => {
            Some("name")
        }
        "volumeMounts" => Some("mountPath"),
        "ports"
            if modified
                .iter()
                .chain(live)
                .any(|i| i.get("containerPort").is_some()) =>
        {
            Some("containerPort")
        }
        "ports" => Some("port"),
        _ => None,
    }
}

/// YAML numbers vs strings for the same value (`"80"` vs `80`).
fn loosely_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(n), Value::String(s)) | (Value::String(s), Value::Number(n)) => {
            n.to_string() == *s
        }
        _ => false,
    }
}

/// The three-way patch of one map level.
pub fn diff_object(
    original: Option<&Map<String, Value>>,
    modified: &Map<String, Value>,
    live: &Map<String, Value>,
) -> Map<String, Value> {
    let mut patch = Map::new();
    if let Some(o) = original {
        for k in o.keys() {
            if !modified.contains_key(k) && live.contains_key(k) {
                patch.insert(k.clone(), Value::Null);
            }
        }
    }
    for (k, m) in modified {
        let orig = original.and_then(|o| o.get(k));
        match (m, live.get(k)) {
            (Value::Object(mm), Some(Value::Object(lm))) => {
                let sub = diff_object(orig.and_then(Value::as_object), mm, lm);
                if !sub.is_empty() {
                    patch.insert(k.clone(), Value::Object(sub));
                }
            }
            (Value::Array(ma), Some(Value::Array(la))) => {
                if !list_holds(ma, la) {
                    let mut items = ma.clone();
                    // Items merged by key stay unless deleted explicitly.
                    if let (Some(key), Some(Value::Array(oa))) = (merge_key(k, ma, la), orig) {
                        for o in oa {
                            let Some(kv) = o.get(key) else { continue };
                            let still = ma.iter().any(|x| x.get(key) == Some(kv));
                            let live_has = la.iter().any(|x| x.get(key) == Some(kv));
                            if !still && live_has {
                                items.push(json!({key: kv, "$patch": "delete"}));
                            }
                        }
                    }
                    patch.insert(k.clone(), Value::Array(items));
                }
            }
            (Value::Null, None) => {}
            (_, Some(l)) if l == m || loosely_equal(l, m) => {}
            _ => {
                patch.insert(k.clone(), m.clone());
            }
        }
    }
    patch
}

/// `apply`.
pub async fn run(g: &Global, a: ApplyArgs) -> anyhow::Result<()> {
    let docs = docs_with_resources(read_all(&a.files.filename, a.files.recursive)?)?;
    let (client, default_ns) = g.client()?;
    let mut errs = Errors::default();
    for (d, res) in docs {
        let ns = object_namespace(res, &d.object, &default_ns, g.namespace.as_deref())?;
        let api = Api::<DynamicObject>::dynamic(client.clone(), res, ns.as_deref());
        let name = xkube_api::meta::name(&d.object).to_string();
        let mut modified = d.object.clone();
        set_last_applied(&mut modified, ns.as_deref())?;
        let say = |verb: &str| {
            if a.output.as_deref() == Some("name") {
                println!("{}/{}", res.singular, name);
            } else {
                println!("{}", message(res, &name, verb));
            }
        };
        let live = match api.get_opt(&name).await {
            Ok(l) => l,
            Err(e) => {
                errs.push(describe_error(&e, client.base_url()));
                continue;
            }
        };
        let Some(live) = live else {
            match api.create(&DynamicObject(modified)).await {
                Ok(_) => say("created"),
                Err(e) => errs.push(match &e {
                    xkube_client::Error::Api(s) => format!(
                        "Error from server ({}): error when creating \"{}\": {}",
                        s.reason, d.source, s.message
                    ),
                    other => describe_error(other, client.base_url()),
                }),
            }
            continue;
        };
        let original: Option<Value> = live.0["metadata"]["annotations"][LAST_APPLIED]
            .as_str()
            .and_then(|s| serde_json::from_str(s).ok());
        if original.is_none() {
            eprintln!(
                "Warning: resource {} \"{name}\" is missing the {LAST_APPLIED} annotation which is required by xkubectl apply. xkubectl apply should only be used on resources created declaratively by either xkubectl create --save-config or xkubectl apply. The missing annotation will be patched automatically.",
                res.qualified_plural()
            );
        }
        let (Some(mm), Some(lm)) = (modified.as_object(), live.0.as_object()) else {
            continue;
        };
        let mut patch = diff_object(original.as_ref().and_then(Value::as_object), mm, lm);
        // Never patch identity fields.
        patch.remove("apiVersion");
        patch.remove("kind");
        if patch.is_empty() {
            say("unchanged");
            continue;
        }
        let patch = Value::Object(patch);
        match api.patch(&name, &Patch::Strategic(patch)).await {
            Ok(_) => say("configured"),
            Err(e) => errs.push(match &e {
                xkube_client::Error::Api(s) => format!(
                    "Error from server ({}): error when applying patch:\n{}\nto:\nResource: \"{}\", Name: \"{}\", Namespace: \"{}\"\nfor: \"{}\": {}",
                    s.reason,
                    json!({}),
                    res.qualified_plural(),
                    name,
                    ns.clone().unwrap_or_default(),
                    d.source,
                    s.message
                ),
                other => describe_error(other, client.base_url()),
            }),
        }
    }
    errs.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().expect("object")
    }

    #[test]
    fn last_applied_matches_kubectl_bytes() {
        let mut o = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "settings", "labels": {"tier": "config"}},
            "data": {"mode": "fast", "level": "3"}});
        set_last_applied(&mut o, Some("default")).expect("annotates");
        // What kubectl 1.32 stores for the same file.
        assert_eq!(
            o["metadata"]["annotations"][LAST_APPLIED],
            "{\"apiVersion\":\"v1\",\"data\":{\"level\":\"3\",\"mode\":\"fast\"},\"kind\":\"ConfigMap\",\"metadata\":{\"annotations\":{},\"labels\":{\"tier\":\"config\"},\"name\":\"settings\",\"namespace\":\"default\"}}\n"
        );
        assert_eq!(o["metadata"]["namespace"], "default");
    }

    #[test]
    fn same_configuration_over_defaulted_live_is_empty() {
        let m = obj(
            json!({"spec": {"containers": [{"name": "c", "image": "nginx", "ports": [{"containerPort": 80}]}]}}),
        );
        let live = obj(
            json!({"spec": {"containers": [{"name": "c", "image": "nginx", "imagePullPolicy": "Always",
            "ports": [{"containerPort": 80, "protocol": "TCP"}]}], "restartPolicy": "Always"}, "status": {}}),
        );
        assert!(diff_object(Some(&m), &m, &live).is_empty());
    }

    #[test]
    fn removed_and_changed_fields_are_patched() {
        let orig = obj(json!({"data": {"a": "1", "b": "2"}, "metadata": {"labels": {"x": "1"}}}));
        let m = obj(json!({"data": {"a": "9"}, "metadata": {"labels": {"x": "1"}}}));
        let live = obj(
            json!({"data": {"a": "1", "b": "2", "c": "3"}, "metadata": {"labels": {"x": "1", "y": "2"}}}),
        );
        let p = diff_object(Some(&orig), &m, &live);
        assert_eq!(Value::Object(p), json!({"data": {"a": "9", "b": null}}));
    }

    #[test]
    fn removed_list_items_are_deleted_by_merge_key() {
        let orig = obj(
            json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]}}),
        );
        let m = obj(json!({"spec": {"containers": [{"name": "a", "image": "x"}]}}));
        let live = obj(
            json!({"spec": {"containers": [{"name": "a", "image": "x", "imagePullPolicy": "Always"}, {"name": "b", "image": "y"}]}}),
        );
        let p = diff_object(Some(&orig), &m, &live);
        assert_eq!(
            Value::Object(p),
            json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "$patch": "delete"}]}})
        );
    }
}
