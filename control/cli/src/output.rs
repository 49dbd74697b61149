//! Resource names, messages and object printing shared by the commands.

use serde_json::{Value, json};
use xkube_api::ResourceInfo;

use crate::Reported;

/// Finds a resource by plural, singular, short name or kind (any case, optional `.group`).
pub fn resolve(name: &str) -> Option<&'static ResourceInfo> {
    let lower = name.to_ascii_lowercase();
    let (base, group) = match lower.split_once('.') {
        Some((b, g)) => (b.to_string(), Some(g.to_string())),
        None => (lower.clone(), None),
    };
    xkube_api::RESOURCES.iter().find(|r| {
        group
            .as_deref()
            .is_none_or(|g| g == r.group || (g == "core" && r.group.is_empty()))
            && (r.plural == base
                || r.singular == base
                || r.kind.eq_ignore_ascii_case(&base)
                || r.short_names.contains(&base.as_str()))
    })
}

/// Like [`resolve`], with kubectl's error.
pub fn resolve_or_err(name: &str) -> anyhow::Result<&'static ResourceInfo> {
    resolve(name).ok_or_else(|| {
        Reported(format!(
            "error: the server doesn't have a resource type \"{name}\""
        ))
        .into()
    })
}

/// Finds the resource of a manifest object.
pub fn resource_of(obj: &Value, source: &str) -> anyhow::Result<&'static ResourceInfo> {
    let api_version = obj["apiVersion"].as_str().unwrap_or("");
    let kind = obj["kind"].as_str().unwrap_or("");
    if api_version.is_empty() {
        return Err(Reported(format!(
            "error: error validating \"{source}\": error validating data: apiVersion not set"
        ))
        .into());
    }
    xkube_api::resources::find_by_kind(api_version, kind).ok_or_else(|| {
        Reported(format!(
            "error: resource mapping not found for name: \"{}\" namespace: \"{}\" from \"{source}\": no matches for kind \"{kind}\" in version \"{api_version}\"\nensure CRDs are installed first",
            xkube_api::meta::name(obj),
            xkube_api::meta::namespace(obj)
        ))
        .into()
    })
}

/// `pod "x" created`.
pub fn message(res: &ResourceInfo, name: &str, verb: &str) -> String {
    format!("{} \"{}\" {}", res.singular, name, verb)
}

/// Adds `kind`/`apiVersion` (lists omit them on items).
pub fn with_kind(res: &ResourceInfo, mut v: Value) -> Value {
    if let Some(m) = v.as_object_mut() {
        m.entry("kind").or_insert(json!(res.kind));
        m.entry("apiVersion").or_insert(json!(res.api_version()));
    }
    v
}

/// Prints objects as `-o json|yaml|name` (a `List` when there are several or `list`).
pub fn print_objects(
    format: &str,
    items: &[(&ResourceInfo, Value)],
    as_list: bool,
) -> anyhow::Result<()> {
    match format {
        "name" => {
            for (r, o) in items {
                println!("{}/{}", r.singular, xkube_api::meta::name(o));
            }
        }
        "json" | "yaml" => {
            let v = if !as_list && items.len() == 1 {
                with_kind(items[0].0, items[0].1.clone())
            } else {
                json!({
                    "apiVersion": "v1",
                    "items": items.iter().map(|(r, o)| with_kind(r, o.clone())).collect::<Vec<_>>(),
                    "kind": "List",
                    "metadata": {"resourceVersion": ""},
                })
            };
            if format == "json" {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", serde_yaml::to_string(&v)?);
            }
        }
        f if f.starts_with("jsonpath=") => {
            let template = &f["jsonpath=".len()..];
            let v = if !as_list && items.len() == 1 {
                with_kind(items[0].0, items[0].1.clone())
            } else {
                json!({"apiVersion": "v1", "kind": "List",
                       "items": items.iter().map(|(r, o)| with_kind(r, o.clone())).collect::<Vec<_>>()})
            };
            print!("{}", crate::jsonpath::render(template, &v)?);
        }
        other => {
            return Err(Reported(format!(
                "error: unable to match a printer suitable for the output format \"{other}\", allowed formats are: json,jsonpath,name,wide,yaml"
            ))
            .into());
        }
    }
    Ok(())
}

/// Aligns rows in columns with three spaces between them (kubectl's tabwriter).
pub fn align(rows: &[Vec<String>]) -> Vec<String> {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; cols];
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    rows.iter()
        .map(|r| {
            let mut line = String::new();
            for (i, c) in r.iter().enumerate() {
                if i + 1 == r.len() {
                    line.push_str(c);
                } else {
                    line.push_str(c);
                    let pad = widths[i] - c.chars().count() + 3;
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            line
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_kinds_by_every_name() {
        for n in ["po", "pod", "pods", "Pod", "pods.core"] {
            assert_eq!(resolve(n).map(|r| r.plural), Some("pods"), "{n}");
        }
        assert_eq!(resolve("rc").map(|r| r.kind), Some("ReplicationController"));
        assert_eq!(resolve("svc").map(|r| r.kind), Some("Service"));
        assert_eq!(resolve("ep").map(|r| r.kind), Some("Endpoints"));
        assert!(resolve("widgets").is_none());
    }

    #[test]
    fn aligns_like_tabwriter() {
        let out = align(&[
            vec!["NAME".into(), "READY".into(), "AGE".into()],
            vec!["nginx-long".into(), "1/1".into(), "7s".into()],
        ]);
        assert_eq!(out[0], "NAME         READY   AGE");
        assert_eq!(out[1], "nginx-long   1/1     7s");
    }
}
