//! Reading manifests: files, directories, stdin (`-`), multi-document YAML, JSON, `List`.

use std::io::Read;
use std::path::Path;

use serde_json::Value;

use crate::Reported;

/// One object read from a manifest, with where it came from.
#[derive(Debug, Clone)]
pub struct Doc {
    /// The file (`-` for stdin).
    pub source: String,
    /// The object.
    pub object: Value,
}

fn parse(source: &str, text: &str, out: &mut Vec<Doc>) -> anyhow::Result<()> {
    for de in serde_yaml::Deserializer::from_str(text) {
        let y = <serde_yaml::Value as serde::Deserialize>::deserialize(de).map_err(|e| {
            Reported(format!(
                "error: error parsing {source}: error converting YAML to JSON: {e}"
            ))
        })?;
        let v: Value = serde_json::to_value(&y).map_err(|e| {
            Reported(format!(
                "error: error parsing {source}: error converting YAML to JSON: {e}"
            ))
        })?;
        push(source, v, out)?;
    }
    Ok(())
}

fn push(source: &str, v: Value, out: &mut Vec<Doc>) -> anyhow::Result<()> {
    match v {
        Value::Null => Ok(()),
        Value::Object(ref m) => {
            let kind = m.get("kind").and_then(Value::as_str).unwrap_or("");
            if kind.is_empty() {
                return Err(Reported(format!(
                    "error: error validating \"{source}\": error validating data: kind not set"
                ))
                .into());
            }
            if kind == "List"
                || (kind.ends_with("List") && m.get("items").is_some_and(Value::is_array))
            {
                for item in m
                    .get("items")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    push(source, item.clone(), out)?;
                }
                return Ok(());
            }
            out.push(Doc {
                source: source.to_string(),
                object: v,
            });
            Ok(())
        }
        _ => Err(Reported(format!(
            "error: error parsing {source}: the document is not an object"
        ))
        .into()),
    }
}

fn is_manifest(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

/// Reads every `-f` argument in order.
pub fn read_all(files: &[String], recursive: bool) -> anyhow::Result<Vec<Doc>> {
    if files.is_empty() {
        return Err(Reported("error: must specify one of -f and -k".to_string()).into());
    }
    let mut out = Vec::new();
    for f in files {
        if f == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| Reported(format!("error: reading stdin: {e}")))?;
            parse("STDIN", &text, &mut out)?;
            continue;
        }
        let p = Path::new(f);
        if !p.exists() {
            return Err(Reported(format!("error: the path \"{f}\" does not exist")).into());
        }
        read_path(p, recursive, &mut out)?;
    }
    Ok(out)
}

fn read_path(p: &Path, recursive: bool, out: &mut Vec<Doc>) -> anyhow::Result<()> {
    if p.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(p)
            .map_err(|e| Reported(format!("error: reading {}: {e}", p.display())))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .collect();
        entries.sort();
        for e in entries {
            if e.is_dir() {
                if recursive {
                    read_path(&e, recursive, out)?;
                }
            } else if is_manifest(&e) {
                read_path(&e, recursive, out)?;
            }
        }
        return Ok(());
    }
    let text = std::fs::read_to_string(p)
        .map_err(|e| Reported(format!("error: reading {}: {e}", p.display())))?;
    parse(&p.display().to_string(), &text, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_documents_and_expands_lists() {
        let mut out = Vec::new();
        parse(
            "x.yaml",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\n---\n---\napiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Service, metadata: {name: s}}\n- {apiVersion: v1, kind: Secret, metadata: {name: t}}\n",
            &mut out,
        )
        .expect("parses");
        let kinds: Vec<&str> = out
            .iter()
            .filter_map(|d| d.object["kind"].as_str())
            .collect();
        assert_eq!(kinds, ["Pod", "Service", "Secret"]);
        let mut out = Vec::new();
        let e = parse("bad.yaml", "kind: Pod\n  metadata: [\n", &mut out).expect_err("malformed");
        assert!(
            e.to_string().starts_with("error: error parsing bad.yaml"),
            "{e}"
        );
        let e = parse("nokind.yaml", "metadata: {name: a}\n", &mut out).expect_err("no kind");
        assert!(e.to_string().contains("kind not set"), "{e}");
    }
}
