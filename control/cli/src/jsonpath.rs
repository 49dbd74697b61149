//! A subset of kubectl's `-o jsonpath=TEMPLATE`: literal text and `{...}` expressions with
//! `.field`, `['field.with.dots']`, `[n]` and `[*]` steps (`{.items[*].metadata.name}`);
//! several results are separated by a space, as in kubectl.

use serde_json::Value;

use crate::Reported;

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Field(String),
    Index(usize),
    All,
}

fn parse_path(expr: &str) -> anyhow::Result<Vec<Step>> {
    let mut steps = Vec::new();
    let b = expr.as_bytes();
    let mut i = 0;
    let bad = || {
        Reported(format!(
            "error: error parsing jsonpath {{{expr}}}: unsupported expression"
        ))
    };
    if b.first() == Some(&b'$') {
        i = 1;
    }
    while i < b.len() {
        match b[i] {
            b'.' => {
                let start = i + 1;
                let mut j = start;
                while j < b.len() && b[j] != b'.' && b[j] != b'[' {
                    j += 1;
                }
                if j > start {
                    steps.push(Step::Field(expr[start..j].to_string()));
                }
                i = j;
            }
            b'[' => {
                let end = expr[i..].find(']').map(|e| e + i).ok_or_else(bad)?;
                let inner = expr[i + 1..end].trim();
                if inner == "*" {
                    steps.push(Step::All);
                } else if let Ok(n) = inner.parse::<usize>() {
                    steps.push(Step::Index(n));
                } else if let Some(q) = inner
                    .strip_prefix('\'')
                    .and_then(|s| s.strip_suffix('\''))
                    .or_else(|| inner.strip_prefix('"').and_then(|s| s.strip_suffix('"')))
                {
                    steps.push(Step::Field(q.to_string()));
                } else {
                    return Err(bad().into());
                }
                i = end + 1;
            }
            _ => return Err(bad().into()),
        }
    }
    Ok(steps)
}

fn eval<'a>(v: &'a Value, steps: &[Step], out: &mut Vec<&'a Value>) {
    let Some((first, rest)) = steps.split_first() else {
        out.push(v);
        return;
    };
    match first {
        Step::Field(f) => {
            if let Some(x) = v.get(f) {
                eval(x, rest, out);
            }
        }
        Step::Index(n) => {
            if let Some(x) = v.get(*n) {
                eval(x, rest, out);
            }
        }
        Step::All => match v {
            Value::Array(a) => a.iter().for_each(|x| eval(x, rest, out)),
            Value::Object(m) => m.values().for_each(|x| eval(x, rest, out)),
            _ => {}
        },
    }
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Renders `template` against `v`.
pub fn render(template: &str, v: &Value) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find('}').map(|c| c + open).ok_or_else(|| {
            Reported(format!(
                "error: error parsing jsonpath {template}: unclosed action"
            ))
        })?;
        let expr = rest[open + 1..close].trim();
        let mut found = Vec::new();
        eval(v, &parse_path(expr)?, &mut found);
        out.push_str(&found.iter().map(|x| show(x)).collect::<Vec<_>>().join(" "));
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    Ok(out.replace("\\n", "\n").replace("\\t", "\t"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_paths_indexes_and_wildcards() {
        let v = json!({"spec": {"clusterIP": "10.96.0.5", "ports": [{"port": 80}, {"port": 443}]},
                       "metadata": {"labels": {"app.kubernetes.io/name": "x"}},
                       "items": [{"metadata": {"name": "a"}}, {"metadata": {"name": "b"}}]});
        assert_eq!(render("{.spec.clusterIP}", &v).expect("ok"), "10.96.0.5");
        assert_eq!(render("{.spec.ports[1].port}", &v).expect("ok"), "443");
        assert_eq!(render("{.items[*].metadata.name}", &v).expect("ok"), "a b");
        assert_eq!(
            render("ip={$.spec.clusterIP}:{.spec.ports[0].port}", &v).expect("ok"),
            "ip=10.96.0.5:80"
        );
        assert_eq!(
            render("{.metadata.labels['app.kubernetes.io/name']}", &v).expect("ok"),
            "x"
        );
        assert_eq!(render("{.nope}", &v).expect("ok"), "");
        assert!(render("{.spec.ports[?(@.port==80)]}", &v).is_err());
    }
}
