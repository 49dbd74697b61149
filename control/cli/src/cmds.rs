//! The smaller commands: create, delete, scale, label, annotate, expose, run, cluster-info,
//! api-versions, version, config view.

use std::collections::BTreeMap;

use clap::{Args, Subcommand};
use serde_json::{Map, Value, json};
use xkube_api::ResourceInfo;
use xkube_client::{Api, DeleteParams, DynamicObject, ListParams, Patch, PropagationPolicy};

use crate::get::targets;
use crate::manifest::{Doc, read_all};
use crate::output::{message, resolve_or_err, resource_of};
use crate::{Global, Reported, api_err, describe_error};

/// `-f` flags.
#[derive(Debug, Clone, Args)]
pub struct FileArgs {
    /// Files, directories or `-` for stdin.
    #[arg(short = 'f', long = "filename")]
    pub filename: Vec<String>,
    /// Process directories recursively.
    #[arg(short = 'R', long)]
    pub recursive: bool,
}

/// `create` flags.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct CreateArgs {
    /// Create a resource of a kind from flags instead of files.
    #[command(subcommand)]
    what: Option<crate::generate::CreateCmd>,
    #[command(flatten)]
    files: FileArgs,
    /// Store the configuration in the last-applied annotation (for later `apply`).
    #[arg(long)]
    save_config: bool,
    /// Output format (`name`).
    #[arg(short = 'o', long)]
    output: Option<String>,
}

/// The namespace of a manifest object: its own, else the flag/context one. An explicit
/// `--namespace` that contradicts the object's is an error, as in kubectl.
pub fn object_namespace(
    res: &ResourceInfo,
    obj: &Value,
    default_ns: &str,
    explicit: Option<&str>,
) -> anyhow::Result<Option<String>> {
    if !res.namespaced {
        return Ok(None);
    }
    let own = xkube_api::meta::namespace(obj);
    if let Some(flag) = explicit.filter(|f| !f.is_empty() && !own.is_empty() && *f != own) {
        return Err(Reported(format!(
            "error: the namespace from the provided object \"{own}\" does not match the namespace \"{flag}\". You must pass '--namespace={own}' to perform this operation."
        ))
        .into());
    }
    Ok(Some(if own.is_empty() {
        default_ns.to_string()
    } else {
        own.to_string()
    }))
}

/// Collects per-object errors and reports them at the end (kubectl continues with the rest).
#[derive(Default)]
pub struct Errors(Vec<String>);

impl Errors {
    /// Adds one.
    pub fn push(&mut self, s: String) {
        self.0.push(s);
    }
    /// Ok or the joined errors.
    pub fn finish(self) -> anyhow::Result<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Reported(self.0.join("\n")).into())
        }
    }
}

fn server_err_when(e: &xkube_client::Error, what: &str, source: &str, server: &str) -> String {
    match e {
        xkube_client::Error::Api(s) => format!(
            "Error from server ({}): error when {what} \"{source}\": {}",
            s.reason, s.message
        ),
        other => describe_error(other, server),
    }
}

/// Resolves every document's resource first, failing before any write.
pub fn docs_with_resources(docs: Vec<Doc>) -> anyhow::Result<Vec<(Doc, &'static ResourceInfo)>> {
    let mut out = Vec::new();
    for d in docs {
        let r = resource_of(&d.object, &d.source)?;
        out.push((d, r));
    }
    Ok(out)
}

/// `create -f`.
pub async fn create(g: &Global, a: CreateArgs) -> anyhow::Result<()> {
    if let Some(what) = a.what {
        return crate::generate::create(g, what).await;
    }
    let docs = docs_with_resources(read_all(&a.files.filename, a.files.recursive)?)?;
    let (client, default_ns) = g.client()?;
    let mut errs = Errors::default();
    for (d, res) in docs {
        let ns = object_namespace(res, &d.object, &default_ns, g.namespace.as_deref())?;
        let api = Api::<DynamicObject>::dynamic(client.clone(), res, ns.as_deref());
        let mut obj = d.object.clone();
        if a.save_config {
            crate::apply::set_last_applied(&mut obj, ns.as_deref())?;
        }
        match api.create(&DynamicObject(obj)).await {
            Ok(o) => {
                if a.output.as_deref() == Some("name") {
                    println!("{}/{}", res.singular, xkube_api::meta::name(&o.0));
                } else {
                    println!("{}", message(res, xkube_api::meta::name(&o.0), "created"));
                }
            }
            Err(e) => errs.push(server_err_when(
                &e,
                "creating",
                &d.source,
                client.base_url(),
            )),
        }
    }
    errs.finish()
}

/// `delete` flags.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// TYPE NAME..., TYPE/NAME...
    args: Vec<String>,
    #[command(flatten)]
    files: FileArgs,
    /// Label selector.
    #[arg(short = 'l', long)]
    selector: Option<String>,
    /// Delete all objects of the type in the namespace.
    #[arg(long)]
    all: bool,
    /// Across all namespaces (with -l or --all).
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    /// background, orphan, foreground (true = background, false = orphan).
    #[arg(long, default_value = "background", num_args = 0..=1, default_missing_value = "background")]
    cascade: String,
    /// Seconds the resource has to terminate gracefully (-1: the default).
    #[arg(long, default_value_t = -1)]
    grace_period: i64,
    /// Delete immediately (grace period 0 with --force, 1 otherwise).
    #[arg(long)]
    now: bool,
    /// Immediate deletion (with --grace-period=0).
    #[arg(long)]
    force: bool,
    /// Ignore not-found errors.
    #[arg(long)]
    ignore_not_found: bool,
    /// Do not wait for finalization (accepted for compatibility; deletion never waits).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    wait: bool,
}

fn propagation(cascade: &str) -> anyhow::Result<PropagationPolicy> {
    Ok(match cascade {
        "background" | "true" => PropagationPolicy::Background,
        "orphan" | "false" => PropagationPolicy::Orphan,
        "foreground" => PropagationPolicy::Foreground,
        other => {
            return Err(Reported(format!(
                "error: invalid cascade value ({other}). Must be \"background\", \"foreground\", or \"orphan\""
            ))
            .into());
        }
    })
}

/// `delete`.
pub async fn delete(g: &Global, a: DeleteArgs) -> anyhow::Result<()> {
    let dp = DeleteParams {
        propagation_policy: Some(propagation(&a.cascade)?),
        grace_period_seconds: if a.now {
            Some(1)
        } else if a.grace_period >= 0 {
            Some(a.grace_period)
        } else if a.force {
            Some(0)
        } else {
            None
        },
        ..DeleteParams::default()
    };
    let (client, default_ns) = g.client()?;
    let mut errs = Errors::default();
    let one = |res: &ResourceInfo,
               name: &str,
               r: Result<Value, xkube_client::Error>,
               errs: &mut Errors| match r {
        Ok(_) => {
            println!("{}", message(res, name, "deleted"));
        }
        Err(e) if e.is_not_found() && a.ignore_not_found => {}
        Err(e) => errs.push(describe_error(&e, client.base_url())),
    };
    if !a.files.filename.is_empty() {
        let docs = docs_with_resources(read_all(&a.files.filename, a.files.recursive)?)?;
        for (d, res) in docs {
            let ns = object_namespace(res, &d.object, &default_ns, g.namespace.as_deref())?;
            let api = Api::<DynamicObject>::dynamic(client.clone(), res, ns.as_deref());
            let name = xkube_api::meta::name(&d.object).to_string();
            let r = api.delete(&name, &dp).await;
            one(res, &name, r, &mut errs);
        }
        return errs.finish();
    }
    if a.args.is_empty() {
        return Err(Reported(
            "error: You must provide one or more resources by argument or filename.\nExample resource specifications include:\n   '-f rsrc.yaml'\n   '--filename=rsrc.json'\n   '<resource> <name>'\n   '<resource>'".into(),
        )
        .into());
    }
    let ts = targets(&a.args)?;
    for t in ts {
        let ns = if a.all_namespaces {
            None
        } else {
            Some(default_ns.as_str())
        };
        if t.names.is_empty() {
            if a.selector.is_none() && !a.all {
                return Err(Reported(
                    "error: resource(s) were provided, but no name was specified".into(),
                )
                .into());
            }
            let api = Api::<DynamicObject>::dynamic(client.clone(), t.res, ns);
            let lp = ListParams {
                label_selector: a.selector.clone(),
                ..ListParams::default()
            };
            let list = api.list(&lp).await.map_err(|e| api_err(e, &client))?;
            if list.items.is_empty() {
                match ns {
                    Some(n) if t.res.namespaced => println!("No resources found in {n} namespace."),
                    _ => println!("No resources found"),
                }
            }
            for o in list.items {
                let ons = xkube_api::meta::namespace(&o.0).to_string();
                let api = Api::<DynamicObject>::dynamic(client.clone(), t.res, Some(&ons));
                let name = xkube_api::meta::name(&o.0).to_string();
                let r = api.delete(&name, &dp).await;
                one(t.res, &name, r, &mut errs);
            }
        } else {
            let api = Api::<DynamicObject>::dynamic(client.clone(), t.res, Some(&default_ns));
            for n in &t.names {
                let r = api.delete(n, &dp).await;
                one(t.res, n, r, &mut errs);
            }
        }
    }
    errs.finish()
}

/// `scale` flags.
#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// TYPE NAME or TYPE/NAME.
    args: Vec<String>,
    /// The new desired number of replicas.
    #[arg(long)]
    replicas: i32,
    /// Precondition: the current size must be this.
    #[arg(long, default_value_t = -1)]
    current_replicas: i32,
    #[command(flatten)]
    files: FileArgs,
}

/// `scale`.
pub async fn scale(g: &Global, a: ScaleArgs) -> anyhow::Result<()> {
    if a.replicas < 0 {
        return Err(Reported("error: The --replicas=COUNT flag is required, and COUNT must be greater than or equal to 0".into()).into());
    }
    let (client, default_ns) = g.client()?;
    let mut items: Vec<(&'static ResourceInfo, String, String)> = Vec::new();
    if !a.files.filename.is_empty() {
        for (d, res) in docs_with_resources(read_all(&a.files.filename, a.files.recursive)?)? {
            let ns = object_namespace(res, &d.object, &default_ns, g.namespace.as_deref())?
                .unwrap_or_default();
            items.push((res, ns, xkube_api::meta::name(&d.object).to_string()));
        }
    } else {
        if a.args.is_empty() {
            return Err(Reported("error: required resource not specified".into()).into());
        }
        for t in targets(&a.args)? {
            for n in t.names {
                items.push((t.res, default_ns.clone(), n));
            }
        }
    }
    let mut errs = Errors::default();
    for (res, ns, name) in items {
        if res.subresource("scale").is_none() {
            errs.push(format!(
                "error: no scaler has been implemented for {{\"{}\" \"{}\"}}",
                res.group, res.kind
            ));
            continue;
        }
        let api = Api::<DynamicObject>::dynamic(client.clone(), res, Some(&ns));
        if a.current_replicas >= 0 {
            let cur = api
                .get_scale(&name)
                .await
                .map_err(|e| api_err(e, &client))?;
            let have = cur.spec.and_then(|s| s.replicas).unwrap_or(0);
            if have != a.current_replicas {
                errs.push(format!(
                    "error: Expected replicas to be {}, was {have}",
                    a.current_replicas
                ));
                continue;
            }
        }
        match api.scale(&name, a.replicas).await {
            Ok(_) => println!("{}", message(res, &name, "scaled")),
            Err(e) => errs.push(describe_error(&e, client.base_url())),
        }
    }
    errs.finish()
}

/// `label` / `annotate` flags.
#[derive(Debug, Args)]
pub struct MetaArgs {
    /// TYPE NAME KEY=VAL ... KEY- ..., or TYPE/NAME KEY=VAL ...
    args: Vec<String>,
    /// Overwrite existing values.
    #[arg(long)]
    overwrite: bool,
    /// Label selector (instead of names).
    #[arg(short = 'l', long)]
    selector: Option<String>,
    /// Every object of the type.
    #[arg(long)]
    all: bool,
    #[command(flatten)]
    files: FileArgs,
}

/// `label` (`field` = `labels`) and `annotate` (`annotations`).
pub async fn label(g: &Global, a: MetaArgs, field: &str) -> anyhow::Result<()> {
    let (client, default_ns) = g.client()?;
    let (changes, rest): (Vec<String>, Vec<String>) =
        a.args.iter().cloned().partition(|s| {
            s.contains('=') || (s.ends_with('-') && !s.contains('/') && s.len() > 1)
        });
    // A bare `TYPE NAME-` would be ambiguous; kubectl treats trailing-dash args after the
    // resource arguments as removals.
    let (changes, rest) = if rest.is_empty() && !a.args.is_empty() {
        (changes[1..].to_vec(), vec![a.args[0].clone()])
    } else {
        (changes, rest)
    };
    if changes.is_empty() {
        return Err(Reported(format!(
            "error: at least one {} update is required",
            if field == "labels" {
                "label"
            } else {
                "annotation"
            }
        ))
        .into());
    }
    let mut set: BTreeMap<String, String> = BTreeMap::new();
    let mut remove = Vec::new();
    for c in &changes {
        if let Some((k, v)) = c.split_once('=') {
            if field == "labels" {
                let bad = !xkube_api::validation::qualified_name(k).is_empty()
                    || !xkube_api::validation::label_value(v).is_empty();
                if bad {
                    return Err(Reported(format!("error: invalid label spec: {c}")).into());
                }
            }
            set.insert(k.to_string(), v.to_string());
        } else if let Some(k) = c.strip_suffix('-') {
            remove.push(k.to_string());
        }
    }
    let mut objs: Vec<(&'static ResourceInfo, String, String)> = Vec::new();
    if !a.files.filename.is_empty() {
        for (d, res) in docs_with_resources(read_all(&a.files.filename, a.files.recursive)?)? {
            let ns = object_namespace(res, &d.object, &default_ns, g.namespace.as_deref())?
                .unwrap_or_default();
            objs.push((res, ns, xkube_api::meta::name(&d.object).to_string()));
        }
    } else {
        if rest.is_empty() {
            return Err(Reported("error: one or more resources must be specified as <resource> <name> or <resource>/<name>".into()).into());
        }
        for t in targets(&rest)? {
            if t.names.is_empty() {
                if a.selector.is_none() && !a.all {
                    return Err(Reported(
                        "error: resource(s) were provided, but no name was specified".into(),
                    )
                    .into());
                }
                let api = Api::<DynamicObject>::dynamic(client.clone(), t.res, Some(&default_ns));
                let lp = ListParams {
                    label_selector: a.selector.clone(),
                    ..ListParams::default()
                };
                for o in api.list(&lp).await.map_err(|e| api_err(e, &client))?.items {
                    objs.push((
                        t.res,
                        default_ns.clone(),
                        xkube_api::meta::name(&o.0).to_string(),
                    ));
                }
            } else {
                for n in t.names {
                    objs.push((t.res, default_ns.clone(), n));
                }
            }
        }
    }
    let verb_done = if field == "labels" {
        "labeled"
    } else {
        "annotated"
    };
    let mut errs = Errors::default();
    for (res, ns, name) in objs {
        let api = Api::<DynamicObject>::dynamic(client.clone(), res, Some(&ns));
        let cur = match api.get(&name).await {
            Ok(o) => o.0,
            Err(e) => {
                errs.push(describe_error(&e, client.base_url()));
                continue;
            }
        };
        let existing = xkube_api::meta::string_map(&cur["metadata"][field]);
        if !a.overwrite
            && let Some((k, v)) = set
                .iter()
                .find_map(|(k, v)| existing.get(k).filter(|old| *old != v).map(|old| (k, old)))
        {
            errs.push(format!(
                "error: '{k}' already has a value ({v}), and --overwrite is false"
            ));
            continue;
        }
        let mut m = Map::new();
        for (k, v) in &set {
            m.insert(k.clone(), json!(v));
        }
        for k in &remove {
            if !existing.contains_key(k) {
                eprintln!("label \"{k}\" not found.");
            }
            m.insert(k.clone(), Value::Null);
        }
        let unchanged = set.iter().all(|(k, v)| existing.get(k) == Some(v))
            && remove.iter().all(|k| !existing.contains_key(k));
        if unchanged {
            println!(
                "{}",
                message(
                    res,
                    &name,
                    if field == "labels" {
                        "not labeled"
                    } else {
                        "not annotated"
                    }
                )
            );
            continue;
        }
        let patch = json!({"metadata": {field: Value::Object(m), "resourceVersion": xkube_api::meta::resource_version(&cur)}});
        match api.patch(&name, &Patch::Merge(patch)).await {
            Ok(_) => println!("{}", message(res, &name, verb_done)),
            Err(e) => errs.push(describe_error(&e, client.base_url())),
        }
    }
    errs.finish()
}

/// `expose` flags.
#[derive(Debug, Args)]
pub struct ExposeArgs {
    /// TYPE NAME or TYPE/NAME (rc, pod, service).
    args: Vec<String>,
    #[command(flatten)]
    files: FileArgs,
    /// Name of the new service (default: the exposed object's).
    #[arg(long)]
    name: Option<String>,
    /// The port the service serves on (default: the exposed object's first port).
    #[arg(long)]
    port: Option<i32>,
    /// Name or number of the port on the pods (default: --port).
    #[arg(long)]
    target_port: Option<String>,
    /// TCP, UDP or SCTP.
    #[arg(long, default_value = "TCP")]
    protocol: String,
    /// ClusterIP, NodePort, LoadBalancer or ExternalName.
    #[arg(long = "type")]
    service_type: Option<String>,
    /// Selector (default: the exposed object's).
    #[arg(long)]
    selector: Option<String>,
    /// Labels of the service.
    #[arg(short = 'l', long)]
    labels: Option<String>,
    /// An external IP to accept traffic on.
    #[arg(long)]
    external_ip: Option<String>,
    /// ClusterIP to ask for (`None` for headless).
    #[arg(long)]
    cluster_ip: Option<String>,
    /// None or ClientIP.
    #[arg(long)]
    session_affinity: Option<String>,
    /// Name of the service port.
    #[arg(long)]
    port_name: Option<String>,
}

fn parse_kv(s: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut m = BTreeMap::new();
    for p in s.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| Reported(format!("error: invalid label spec: {p}")))?;
        m.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(m)
}

fn container_ports(spec: &Value) -> Vec<(i64, String)> {
    spec["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| {
            p["containerPort"]
                .as_i64()
                .map(|n| (n, p["protocol"].as_str().unwrap_or("TCP").to_string()))
        })
        .collect()
}

/// `expose`.
pub async fn expose(g: &Global, a: ExposeArgs) -> anyhow::Result<()> {
    let (client, default_ns) = g.client()?;
    let (res, ns, name) = if !a.files.filename.is_empty() {
        let docs = docs_with_resources(read_all(&a.files.filename, a.files.recursive)?)?;
        let (d, res) = docs
            .into_iter()
            .next()
            .ok_or_else(|| Reported("error: no objects passed to expose".into()))?;
        let ns = object_namespace(res, &d.object, &default_ns, g.namespace.as_deref())?
            .unwrap_or_default();
        (res, ns, xkube_api::meta::name(&d.object).to_string())
    } else {
        let ts = targets(&a.args)?;
        let t = ts
            .into_iter()
            .next()
            .filter(|t| t.names.len() == 1)
            .ok_or_else(|| {
                Reported(
                    "error: You must provide one resource and one name: TYPE NAME or TYPE/NAME"
                        .into(),
                )
            })?;
        (t.res, default_ns.clone(), t.names[0].clone())
    };
    let api = Api::<DynamicObject>::dynamic(client.clone(), res, Some(&ns));
    let obj = api.get(&name).await.map_err(|e| api_err(e, &client))?.0;
    let (selector, ports): (BTreeMap<String, String>, Vec<(i64, String)>) = match res.kind {
        "ReplicationController" => {
            let sel = xkube_api::meta::string_map(&obj["spec"]["selector"]);
            let sel = if sel.is_empty() {
                xkube_api::meta::string_map(&obj["spec"]["template"]["metadata"]["labels"])
            } else {
                sel
            };
            (sel, container_ports(&obj["spec"]["template"]["spec"]))
        }
        "Pod" => (xkube_api::meta::labels(&obj), container_ports(&obj["spec"])),
        "Service" => (
            xkube_api::meta::string_map(&obj["spec"]["selector"]),
            obj["spec"]["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| {
                    p["port"]
                        .as_i64()
                        .map(|n| (n, p["protocol"].as_str().unwrap_or("TCP").to_string()))
                })
                .collect(),
        ),
        other => {
            return Err(Reported(format!("error: cannot expose a {other}")).into());
        }
    };
    let selector = match &a.selector {
        Some(s) => parse_kv(s)?,
        None => selector,
    };
    if selector.is_empty() {
        return Err(Reported(format!(
            "error: couldn't retrieve selectors via --selector flag or introspection: the {} has no labels",
            res.singular
        ))
        .into());
    }
    let port_list: Vec<(i64, String)> = match a.port {
        Some(p) => vec![(i64::from(p), a.protocol.clone())],
        None => ports,
    };
    if port_list.is_empty() {
        return Err(
            Reported("error: couldn't find port via --port flag or introspection".into()).into(),
        );
    }
    let multi = port_list.len() > 1;
    let ports_json: Vec<Value> = port_list
        .iter()
        .enumerate()
        .map(|(i, (p, proto))| {
            let mut port = json!({"port": p, "protocol": proto});
            let target: Value = match &a.target_port {
                Some(t) => t
                    .parse::<i64>()
                    .map(|n| json!(n))
                    .unwrap_or_else(|_| json!(t)),
                None => json!(p),
            };
            port["targetPort"] = target;
            if let Some(n) = &a.port_name {
                port["name"] = json!(n);
            } else if multi {
                port["name"] = json!(format!("port-{}", i + 1));
            }
            port
        })
        .collect();
    let svc_name = a.name.clone().unwrap_or_else(|| name.clone());
    let labels = match &a.labels {
        Some(l) => parse_kv(l)?,
        None => xkube_api::meta::labels(&obj),
    };
    let mut svc = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": svc_name, "namespace": ns},
        "spec": {"selector": selector, "ports": ports_json},
    });
    if !labels.is_empty() {
        svc["metadata"]["labels"] = json!(labels);
    }
    if let Some(t) = &a.service_type {
        svc["spec"]["type"] = json!(t);
    }
    if let Some(ip) = &a.external_ip {
        svc["spec"]["externalIPs"] = json!([ip]);
    }
    if let Some(ip) = &a.cluster_ip {
        svc["spec"]["clusterIP"] = json!(ip);
    }
    if let Some(s) = &a.session_affinity {
        svc["spec"]["sessionAffinity"] = json!(s);
    }
    let services = crate::output::resolve_or_err("services")?;
    let sapi = Api::<DynamicObject>::dynamic(client.clone(), services, Some(&ns));
    sapi.create(&DynamicObject(svc))
        .await
        .map_err(|e| api_err(e, &client))?;
    println!("{}", message(services, &svc_name, "exposed"));
    Ok(())
}

/// `run` flags.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Name of the pod (or replication controller).
    name: String,
    /// The image.
    #[arg(long)]
    image: String,
    /// Create a replication controller with this many replicas instead of a pod.
    #[arg(long, short = 'r')]
    replicas: Option<i32>,
    /// The port the container exposes.
    #[arg(long)]
    port: Option<i32>,
    /// Labels (`a=b,c=d`; default `run=<name>`).
    #[arg(short = 'l', long)]
    labels: Option<String>,
    /// Environment variables `KEY=VALUE`.
    #[arg(long)]
    env: Vec<String>,
    /// Always, OnFailure or Never.
    #[arg(long)]
    restart: Option<String>,
    /// Treat the arguments as the command rather than args.
    #[arg(long)]
    command: bool,
    /// Also create a ClusterIP service for --port.
    #[arg(long)]
    expose: bool,
    /// Container arguments (after `--`).
    #[arg(last = true)]
    args: Vec<String>,
}

/// `run`.
pub async fn run_cmd(g: &Global, a: RunArgs) -> anyhow::Result<()> {
    let (client, ns) = g.client()?;
    let labels = match &a.labels {
        Some(l) => parse_kv(l)?,
        None => std::iter::once(("run".to_string(), a.name.clone())).collect(),
    };
    let mut container = json!({"name": a.name, "image": a.image});
    if let Some(p) = a.port {
        container["ports"] = json!([{"containerPort": p}]);
    }
    if !a.env.is_empty() {
        let env: Vec<Value> = a
            .env
            .iter()
            .map(|e| {
                let (k, v) = e.split_once('=').unwrap_or((e.as_str(), ""));
                json!({"name": k, "value": v})
            })
            .collect();
        container["env"] = json!(env);
    }
    if !a.args.is_empty() {
        container[if a.command { "command" } else { "args" }] = json!(a.args);
    }
    let mut pod_spec = json!({"containers": [container]});
    let (res, obj) = match a.replicas {
        Some(n) => {
            if let Some(r) = &a.restart
                && r != "Always"
            {
                return Err(Reported(format!(
                    "error: --restart={r} is invalid for a replication controller; only Always"
                ))
                .into());
            }
            (
                resolve_or_err("replicationcontrollers")?,
                json!({
                    "apiVersion": "v1", "kind": "ReplicationController",
                    "metadata": {"name": a.name, "namespace": ns, "labels": labels},
                    "spec": {"replicas": n, "selector": labels,
                             "template": {"metadata": {"labels": labels}, "spec": pod_spec}},
                }),
            )
        }
        None => {
            if let Some(r) = &a.restart {
                pod_spec["restartPolicy"] = json!(r);
            }
            (
                resolve_or_err("pods")?,
                json!({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": a.name, "namespace": ns, "labels": labels},
                    "spec": pod_spec,
                }),
            )
        }
    };
    let api = Api::<DynamicObject>::dynamic(client.clone(), res, Some(&ns));
    api.create(&DynamicObject(obj))
        .await
        .map_err(|e| api_err(e, &client))?;
    if a.expose {
        let Some(p) = a.port else {
            return Err(
                Reported("error: --port must be set when exposing a service".into()).into(),
            );
        };
        let services = resolve_or_err("services")?;
        let svc = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": a.name, "namespace": ns},
            "spec": {"selector": labels, "ports": [{"port": p, "targetPort": p}]}});
        Api::<DynamicObject>::dynamic(client.clone(), services, Some(&ns))
            .create(&DynamicObject(svc))
            .await
            .map_err(|e| api_err(e, &client))?;
        println!("{}", message(services, &a.name, "created"));
    }
    println!("{}", message(res, &a.name, "created"));
    Ok(())
}

/// `cluster-info`.
pub async fn cluster_info(g: &Global) -> anyhow::Result<()> {
    let (client, _) = g.client()?;
    client.version().await.map_err(|e| api_err(e, &client))?;
    println!(
        "Kubernetes control plane is running at {}",
        client.base_url()
    );
    let services = resolve_or_err("services")?;
    let api = Api::<DynamicObject>::dynamic(client.clone(), services, Some("kube-system"));
    if let Ok(list) = api
        .list(&ListParams::default().labels("kubernetes.io/cluster-service=true"))
        .await
    {
        for s in list.items {
            let name = xkube_api::meta::name(&s.0);
            let title = s.0["metadata"]["labels"]["kubernetes.io/name"]
                .as_str()
                .unwrap_or(name)
                .to_string();
            println!(
                "{title} is running at {}/api/v1/namespaces/kube-system/services/{name}/proxy",
                client.base_url()
            );
        }
    }
    println!("\nTo further debug and diagnose cluster problems, use 'xkubectl cluster-info dump'.");
    Ok(())
}

/// `api-versions`.
pub async fn api_versions(g: &Global) -> anyhow::Result<()> {
    let (client, _) = g.client()?;
    for v in client
        .api_versions()
        .await
        .map_err(|e| api_err(e, &client))?
    {
        println!("{v}");
    }
    Ok(())
}

/// `version` flags.
#[derive(Debug, Args)]
pub struct VersionArgs {
    /// Client version only.
    #[arg(long)]
    client: bool,
    /// json or yaml.
    #[arg(short = 'o', long)]
    output: Option<String>,
}

const CLIENT_GIT_VERSION: &str = concat!("v1.33.0-xkube.", env!("CARGO_PKG_VERSION"));

/// `version`.
pub async fn version(g: &Global, a: VersionArgs) -> anyhow::Result<()> {
    let client_info = json!({"major": "1", "minor": "33", "gitVersion": CLIENT_GIT_VERSION, "platform": format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH)});
    let server = if a.client {
        None
    } else {
        let (client, _) = g.client()?;
        Some(client.version().await.map_err(|e| api_err(e, &client))?)
    };
    match a.output.as_deref() {
        Some("json") => {
            let mut v = json!({"clientVersion": client_info});
            if let Some(s) = server {
                v["serverVersion"] = s;
            }
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Some("yaml") => {
            let mut v = json!({"clientVersion": client_info});
            if let Some(s) = server {
                v["serverVersion"] = s;
            }
            print!("{}", serde_yaml::to_string(&v)?);
        }
        _ => {
            println!("Client Version: {CLIENT_GIT_VERSION}");
            if let Some(s) = server {
                println!(
                    "Server Version: {}",
                    s["gitVersion"].as_str().unwrap_or("unknown")
                );
            }
        }
    }
    Ok(())
}

/// `config` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// Display merged kubeconfig settings (secrets redacted unless --raw).
    View {
        /// Print certificates and keys.
        #[arg(long)]
        raw: bool,
        /// Only the current context's entries.
        #[arg(long)]
        minify: bool,
    },
    /// Display the current context.
    CurrentContext,
}

/// `config`.
pub fn config(g: &Global, cmd: ConfigCmd) -> anyhow::Result<()> {
    let mut kc = xkube_client::Kubeconfig::load(g.kubeconfig.as_deref())?;
    match cmd {
        ConfigCmd::CurrentContext => {
            match kc.current_context.as_deref().filter(|c| !c.is_empty()) {
                Some(c) => println!("{c}"),
                None => return Err(Reported("error: current-context is not set".into()).into()),
            }
        }
        ConfigCmd::View { raw, minify } => {
            if minify {
                let cur = kc.current_context.clone().unwrap_or_default();
                let ctx = kc.context(&cur).cloned().unwrap_or_default();
                kc.contexts.retain(|c| c.name == cur);
                kc.clusters.retain(|c| c.name == ctx.cluster);
                kc.users.retain(|u| u.name == ctx.user);
            }
            if !raw {
                for c in &mut kc.clusters {
                    if c.cluster.certificate_authority_data.is_some() {
                        c.cluster.certificate_authority_data = Some("DATA+OMITTED".into());
                    }
                }
                for u in &mut kc.users {
                    for f in [
                        &mut u.user.client_certificate_data,
                        &mut u.user.client_key_data,
                    ] {
                        if f.is_some() {
                            *f = Some("DATA+OMITTED".into());
                        }
                    }
                    for f in [&mut u.user.token, &mut u.user.password] {
                        if f.is_some() {
                            *f = Some("REDACTED".into());
                        }
                    }
                }
            }
            kc.api_version.get_or_insert_with(|| "v1".into());
            kc.kind.get_or_insert_with(|| "Config".into());
            print!("{}", serde_yaml::to_string(&kc)?);
        }
    }
    Ok(())
}
