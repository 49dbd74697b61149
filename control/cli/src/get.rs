//! `get`: server-side tables, `-o wide|json|yaml|name`, selectors, all namespaces, watch.

use clap::Args;
use futures::StreamExt;
use http::Method;
use serde_json::{Value, json};
use xkube_api::ResourceInfo;
use xkube_client::api::encode_query;
use xkube_client::client::ACCEPT_TABLE;
use xkube_client::{Api, Client, DynamicObject, ListParams, WatchEvent};

use crate::output::{align, print_objects, resolve_or_err};
use crate::{Global, Reported, api_err};

/// `get` flags.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// TYPE[.GROUP] [NAME...], TYPE/NAME ..., or TYPE1,TYPE2.
    #[arg(required = true)]
    pub args: Vec<String>,
    /// Output format: wide, json, yaml, name.
    #[arg(short = 'o', long)]
    pub output: Option<String>,
    /// Label selector.
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Field selector.
    #[arg(long)]
    pub field_selector: Option<String>,
    /// List across all namespaces.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Watch for changes after listing.
    #[arg(short = 'w', long)]
    pub watch: bool,
    /// Only watch for changes, without the initial list.
    #[arg(long)]
    pub watch_only: bool,
    /// Print the labels as the last column.
    #[arg(long)]
    pub show_labels: bool,
    /// Do not print headers.
    #[arg(long)]
    pub no_headers: bool,
}

/// What to fetch: a resource and optional names.
pub struct Target {
    /// The resource.
    pub res: &'static ResourceInfo,
    /// Names (empty: all).
    pub names: Vec<String>,
}

/// Parses `TYPE NAME...`, `TYPE/NAME ...` and `T1,T2` forms.
pub fn targets(args: &[String]) -> anyhow::Result<Vec<Target>> {
    let mut out: Vec<Target> = Vec::new();
    if args.iter().any(|a| a.contains('/')) {
        for a in args {
            let Some((t, n)) = a.split_once('/') else {
                return Err(Reported("error: there is no need to specify a resource type as a separate argument when passing arguments in resource/name form (e.g. 'xkubectl get resource/<resource_name>' instead of 'xkubectl get resource resource/<resource_name>'".to_string())
                .into());
            };
            let res = resolve_or_err(t)?;
            match out.iter_mut().find(|x| x.res.plural == res.plural) {
                Some(x) => x.names.push(n.to_string()),
                None => out.push(Target {
                    res,
                    names: vec![n.to_string()],
                }),
            }
        }
        return Ok(out);
    }
    let names: Vec<String> = args[1..].to_vec();
    for t in args[0].split(',').filter(|t| !t.is_empty()) {
        if t == "all" {
            for r in xkube_api::RESOURCES
                .iter()
                .filter(|r| r.categories.contains(&"all"))
            {
                out.push(Target {
                    res: r,
                    names: names.clone(),
                });
            }
            continue;
        }
        out.push(Target {
            res: resolve_or_err(t)?,
            names: names.clone(),
        });
    }
    Ok(out)
}

fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "<none>".into(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => other.to_string(),
    }
}

/// Table rows for a `Table` object: header (when `header`) and one row per object.
pub struct TablePrinter {
    wide: bool,
    all_ns: bool,
    kind_prefix: Option<String>,
    show_labels: bool,
    columns: Vec<(String, i64)>,
}

impl TablePrinter {
    fn new(wide: bool, all_ns: bool, kind_prefix: Option<String>, show_labels: bool) -> Self {
        TablePrinter {
            wide,
            all_ns,
            kind_prefix,
            show_labels,
            columns: Vec::new(),
        }
    }

    fn learn(&mut self, table: &Value) {
        let defs = table["columnDefinitions"].as_array();
        if let Some(defs) = defs.filter(|d| !d.is_empty()) {
            self.columns = defs
                .iter()
                .map(|c| {
                    (
                        c["name"].as_str().unwrap_or("").to_string(),
                        c["priority"].as_i64().unwrap_or(0),
                    )
                })
                .collect();
        }
    }

    fn header(&self) -> Vec<String> {
        let mut h = Vec::new();
        if self.all_ns {
            h.push("NAMESPACE".to_string());
        }
        for (n, p) in &self.columns {
            if *p == 0 || self.wide {
                h.push(n.to_uppercase());
            }
        }
        if self.show_labels {
            h.push("LABELS".into());
        }
        h
    }

    fn rows(&self, table: &Value) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        for r in table["rows"].as_array().into_iter().flatten() {
            let mut line = Vec::new();
            if self.all_ns {
                line.push(
                    r["object"]["metadata"]["namespace"]
                        .as_str()
                        .unwrap_or("")
                        .to_string(),
                );
            }
            for (i, (_, p)) in self.columns.iter().enumerate() {
                if *p == 0 || self.wide {
                    let mut c = cell(&r["cells"][i]);
                    if i == 0
                        && let Some(k) = &self.kind_prefix
                    {
                        c = format!("{k}/{c}");
                    }
                    line.push(c);
                }
            }
            if self.show_labels {
                line.push(xkube_api::table::selector_string(
                    &r["object"]["metadata"]["labels"],
                ));
            }
            out.push(line);
        }
        out
    }
}

fn list_query(a: &GetArgs, extra: &[(&str, String)]) -> String {
    let mut q: Vec<(String, String)> = Vec::new();
    if let Some(l) = a.selector.as_ref().filter(|s| !s.is_empty()) {
        q.push(("labelSelector".into(), l.clone()));
    }
    if let Some(f) = a.field_selector.as_ref().filter(|s| !s.is_empty()) {
        q.push(("fieldSelector".into(), f.clone()));
    }
    for (k, v) in extra {
        q.push((k.to_string(), v.clone()));
    }
    encode_query(&q)
}

async fn get_table(client: &Client, path: &str) -> Result<Value, xkube_client::Error> {
    let v = client
        .request_json(Method::GET, path, None, Some(ACCEPT_TABLE))
        .await?;
    Ok(as_table(v))
}

/// A server that answers with objects instead of a Table gets kubectl's default columns.
fn as_table(v: Value) -> Value {
    if v["kind"] == "Table" {
        return v;
    }
    let items: Vec<Value> = match v["items"].as_array() {
        Some(items) => items.clone(),
        None => vec![v],
    };
    let now = jiff::Timestamp::now();
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            let age = xkube_api::table::age(&o["metadata"]["creationTimestamp"], now);
            json!({"cells": [xkube_api::meta::name(o), age],
                   "object": {"metadata": o["metadata"].clone()}})
        })
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1",
           "columnDefinitions": [{"name": "Name", "priority": 0}, {"name": "Age", "priority": 0}],
           "rows": rows})
}

/// Runs `get`.
pub async fn run(g: &Global, a: GetArgs) -> anyhow::Result<()> {
    let (client, default_ns) = g.client()?;
    let targets = targets(&a.args)?;
    let output = a.output.clone().unwrap_or_default();
    let wide = output == "wide";
    let table_mode = output.is_empty() || wide;
    if !table_mode
        && !matches!(output.as_str(), "json" | "yaml" | "name")
        && !output.starts_with("jsonpath=")
    {
        return Err(Reported(format!(
            "error: unable to match a printer suitable for the output format \"{output}\", allowed formats are: json,jsonpath,name,wide,yaml"
        ))
        .into());
    }
    let ns = if a.all_namespaces {
        None
    } else {
        Some(default_ns.as_str())
    };
    let multi = targets.len() > 1;
    let mut errors = Vec::new();
    let mut printed_any = false;
    let mut objects: Vec<(&ResourceInfo, Value)> = Vec::new();
    let single_object = targets.len() == 1 && targets[0].names.len() == 1;

    if a.watch || a.watch_only {
        if targets.len() != 1 {
            return Err(
                Reported("error: you may only specify a single resource type".into()).into(),
            );
        }
        return watch(&client, &a, targets[0].res, ns, &targets[0].names).await;
    }

    for t in &targets {
        let api = Api::<DynamicObject>::dynamic(client.clone(), t.res, ns);
        let all_ns = a.all_namespaces && t.res.namespaced;
        let mut printer = TablePrinter::new(
            wide,
            all_ns,
            multi.then(|| t.res.singular.to_string()),
            a.show_labels,
        );
        let mut rows = Vec::new();
        if t.names.is_empty() {
            if table_mode {
                let path = format!("{}{}", api.collection_path(), list_query(&a, &[]));
                let table = get_table(&client, &path)
                    .await
                    .map_err(|e| api_err(e, &client))?;
                printer.learn(&table);
                rows.extend(printer.rows(&table));
            } else {
                let lp = ListParams {
                    label_selector: a.selector.clone(),
                    field_selector: a.field_selector.clone(),
                    ..ListParams::default()
                };
                let list = api.list(&lp).await.map_err(|e| api_err(e, &client))?;
                objects.extend(list.items.into_iter().map(|o| (t.res, o.0)));
            }
        } else {
            for n in &t.names {
                if table_mode {
                    let path = api.object_path(n, None);
                    match get_table(&client, &path).await {
                        Ok(table) => {
                            printer.learn(&table);
                            rows.extend(printer.rows(&table));
                        }
                        Err(e) => errors.push(crate::describe_error(&e, client.base_url())),
                    }
                } else {
                    match api.get(n).await {
                        Ok(o) => objects.push((t.res, o.0)),
                        Err(e) => errors.push(crate::describe_error(&e, client.base_url())),
                    }
                }
            }
        }
        if table_mode && !rows.is_empty() {
            if printed_any {
                println!();
            }
            let mut all = Vec::new();
            if !a.no_headers {
                all.push(printer.header());
            }
            all.extend(rows);
            for l in align(&all) {
                println!("{l}");
            }
            printed_any = true;
        }
    }
    if !table_mode {
        if !objects.is_empty() || output != "name" {
            if objects.is_empty() && errors.is_empty() {
                print_objects(&output, &objects, true)?;
            } else if !objects.is_empty() {
                print_objects(&output, &objects, !single_object)?;
            }
        }
        printed_any = !objects.is_empty();
    }
    if !printed_any && errors.is_empty() && targets.iter().all(|t| t.names.is_empty()) && table_mode
    {
        match ns {
            Some(n) if targets.iter().any(|t| t.res.namespaced) => {
                eprintln!("No resources found in {n} namespace.")
            }
            _ => eprintln!("No resources found"),
        }
    }
    if !errors.is_empty() {
        return Err(Reported(errors.join("\n")).into());
    }
    Ok(())
}

async fn watch(
    client: &Client,
    a: &GetArgs,
    res: &'static ResourceInfo,
    ns: Option<&str>,
    names: &[String],
) -> anyhow::Result<()> {
    let api = Api::<DynamicObject>::dynamic(client.clone(), res, ns);
    let mut field = a.field_selector.clone();
    if let Some(n) = names.first() {
        field = Some(format!("metadata.name={n}"));
    }
    let args = GetArgs {
        args: Vec::new(),
        output: a.output.clone(),
        selector: a.selector.clone(),
        field_selector: field,
        all_namespaces: a.all_namespaces,
        watch: a.watch,
        watch_only: a.watch_only,
        show_labels: a.show_labels,
        no_headers: a.no_headers,
    };
    let wide = a.output.as_deref() == Some("wide");
    let name_only = a.output.as_deref() == Some("name");
    let mut printer = TablePrinter::new(
        wide,
        a.all_namespaces && res.namespaced,
        None,
        a.show_labels,
    );
    let path = format!("{}{}", api.collection_path(), list_query(&args, &[]));
    let table = get_table(client, &path)
        .await
        .map_err(|e| api_err(e, client))?;
    let rv = table["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("")
        .to_string();
    printer.learn(&table);
    let mut header_done = a.no_headers;
    let mut widths_rows: Vec<Vec<String>> = vec![printer.header()];
    if !a.watch_only {
        let rows = printer.rows(&table);
        if !rows.is_empty() {
            if name_only {
                for r in &table["rows"].as_array().cloned().unwrap_or_default() {
                    println!("{}/{}", res.singular, cell(&r["cells"][0]));
                }
            } else {
                let mut all = Vec::new();
                if !header_done {
                    all.push(printer.header());
                }
                all.extend(rows.clone());
                for l in align(&all) {
                    println!("{l}");
                }
                header_done = true;
                widths_rows.extend(rows);
            }
        }
    }
    // Follow with table rows from the watch.
    let q = list_query(
        &args,
        &[("watch", "1".to_string()), ("resourceVersion", rv.clone())],
    );
    let resp = client
        .send(
            Method::GET,
            &format!("{}{}", api.collection_path(), q),
            None,
            Some(ACCEPT_TABLE),
            None,
        )
        .await
        .map_err(|e| api_err(e, client))?;
    let mut stream = resp.bytes_stream();
    let mut buf = Vec::<u8>::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| Reported(format!("error: watch failed: {e}")))?;
        buf.extend_from_slice(&chunk);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let ev: Value = match serde_json::from_slice(&line) {
                Ok(v) => v,
                Err(_) => continue,
            };
            match xkube_client::api::parse_watch_line::<Value>(&line) {
                Ok(WatchEvent::Error(s)) => {
                    return Err(Reported(format!(
                        "Error from server ({}): {}",
                        s.reason, s.message
                    ))
                    .into());
                }
                Ok(WatchEvent::Bookmark(_)) => continue,
                _ => {}
            }
            let obj = &ev["object"];
            if obj["kind"] == json!("Table") {
                printer.learn(obj);
                let rows = printer.rows(obj);
                if name_only {
                    for r in obj["rows"].as_array().into_iter().flatten() {
                        println!("{}/{}", res.singular, cell(&r["cells"][0]));
                    }
                    continue;
                }
                for r in rows {
                    widths_rows.push(r.clone());
                    let aligned = align(&widths_rows);
                    if !header_done {
                        println!("{}", aligned[0]);
                        header_done = true;
                    }
                    if let Some(l) = aligned.last() {
                        println!("{l}");
                    }
                }
            } else {
                println!("{}/{}", res.singular, xkube_api::meta::name(obj));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_without_a_table_get_name_and_age() {
        let t = as_table(json!({"kind": "WidgetList", "items": [
            {"metadata": {"name": "w1", "creationTimestamp": "2020-01-01T00:00:00Z"}}]}));
        let p = TablePrinter::new(false, false, None, false);
        let mut p = p;
        p.learn(&t);
        assert_eq!(p.header(), ["NAME", "AGE"]);
        let rows = p.rows(&t);
        assert_eq!(rows[0][0], "w1");
        assert!(rows[0][1].ends_with('d'), "{:?}", rows[0]);
    }
}
