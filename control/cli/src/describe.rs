//! `describe`: the fields kubectl shows for pods, services, replication controllers, nodes,
//! namespaces, endpoints and secrets, plus the Events that involve the object.

use std::fmt::Write as _;

use clap::Args;
use serde_json::Value;
use xkube_api::ResourceInfo;
use xkube_api::meta;
use xkube_api::table::{age, or_none, selector_string};
use xkube_client::{Api, Client, DynamicObject, ListParams};

use crate::get::targets;
use crate::{Global, Reported, api_err, describe_error};

/// `describe` flags.
#[derive(Debug, Args)]
pub struct DescribeArgs {
    /// TYPE [NAME_PREFIX] or TYPE/NAME.
    #[arg(required = true)]
    args: Vec<String>,
    /// Label selector.
    #[arg(short = 'l', long)]
    selector: Option<String>,
    /// Across all namespaces.
    #[arg(short = 'A', long)]
    all_namespaces: bool,
}

/// A describe page under construction: `label: value` lines aligned like kubectl's tabwriter
/// (each run of consecutive key/value lines shares one value column).
struct Page {
    lines: Vec<Line>,
}

enum Line {
    /// `indent`, label (empty for a continuation line), value.
    Kv(usize, String, String),
    Raw(String),
}

impl Page {
    fn new() -> Self {
        Page { lines: Vec::new() }
    }

    fn kv(&mut self, indent: usize, key: &str, value: impl AsRef<str>) {
        let mut values = value.as_ref().split('\n');
        let first = values.next().unwrap_or("").to_string();
        self.lines.push(Line::Kv(indent, format!("{key}:"), first));
        for v in values {
            self.lines
                .push(Line::Kv(indent, String::new(), v.to_string()));
        }
    }

    fn line(&mut self, s: impl AsRef<str>) {
        for l in s.as_ref().split('\n') {
            self.lines.push(Line::Raw(l.to_string()));
        }
    }

    fn map(&mut self, indent: usize, key: &str, m: &Value) {
        let map = meta::string_map(m);
        if map.is_empty() {
            self.kv(indent, key, "<none>");
            return;
        }
        let joined: Vec<String> = map.iter().map(|(k, v)| format!("{k}={v}")).collect();
        self.kv(indent, key, joined.join("\n"));
    }

    fn render(&self) -> String {
        let mut out = String::new();
        let mut i = 0;
        while i < self.lines.len() {
            match &self.lines[i] {
                Line::Raw(l) => {
                    out.push_str(l);
                    out.push('\n');
                    i += 1;
                }
                Line::Kv(..) => {
                    let start = i;
                    while i < self.lines.len() && matches!(self.lines[i], Line::Kv(..)) {
                        i += 1;
                    }
                    let width = self.lines[start..i]
                        .iter()
                        .map(|l| match l {
                            Line::Kv(ind, label, _) => ind + label.len(),
                            Line::Raw(_) => 0,
                        })
                        .max()
                        .unwrap_or(0)
                        + 2;
                    for l in &self.lines[start..i] {
                        if let Line::Kv(ind, label, value) = l {
                            let cell = format!("{}{label}", " ".repeat(*ind));
                            let _ = writeln!(out, "{cell:<width$}{value}");
                        }
                    }
                }
            }
        }
        out
    }
}

fn s<'a>(v: &'a Value, default: &'a str) -> &'a str {
    v.as_str().filter(|s| !s.is_empty()).unwrap_or(default)
}

fn time_string(ts: &Value) -> String {
    ts.as_str()
        .and_then(meta::parse_time)
        .map(|t| t.strftime("%a, %d %b %Y %H:%M:%S +0000").to_string())
        .unwrap_or_else(|| "<unset>".into())
}

fn container_state(st: &Value) -> (String, Vec<(String, String)>) {
    if let Some(r) = st.get("running") {
        return (
            "Running".into(),
            vec![("Started".into(), time_string(&r["startedAt"]))],
        );
    }
    if let Some(w) = st.get("waiting") {
        return (
            "Waiting".into(),
            vec![("Reason".into(), s(&w["reason"], "").to_string())],
        );
    }
    if let Some(t) = st.get("terminated") {
        return (
            "Terminated".into(),
            vec![
                ("Reason".into(), s(&t["reason"], "").to_string()),
                ("Exit Code".into(), t["exitCode"].to_string()),
                ("Started".into(), time_string(&t["startedAt"])),
                ("Finished".into(), time_string(&t["finishedAt"])),
            ],
        );
    }
    ("Waiting".into(), Vec::new())
}

fn describe_pod(p: &mut Page, o: &Value) {
    let spec = &o["spec"];
    let status = &o["status"];
    p.kv(0, "Name", meta::name(o));
    p.kv(0, "Namespace", meta::namespace(o));
    p.kv(
        0,
        "Priority",
        spec["priority"].as_i64().unwrap_or(0).to_string(),
    );
    if let Some(sa) = spec["serviceAccountName"].as_str() {
        p.kv(0, "Service Account", sa);
    }
    let node = match (spec["nodeName"].as_str(), status["hostIP"].as_str()) {
        (Some(n), Some(ip)) => format!("{n}/{ip}"),
        (Some(n), None) => n.to_string(),
        _ => "<none>".into(),
    };
    p.kv(0, "Node", node);
    if !status["startTime"].is_null() {
        p.kv(0, "Start Time", time_string(&status["startTime"]));
    }
    p.map(0, "Labels", &o["metadata"]["labels"]);
    p.map(0, "Annotations", &o["metadata"]["annotations"]);
    if !o["metadata"]["deletionTimestamp"].is_null() {
        p.kv(0, "Status", "Terminating");
    } else {
        p.kv(0, "Status", s(&status["phase"], "Pending"));
    }
    p.kv(0, "IP", s(&status["podIP"], ""));
    let ips: Vec<&str> = status["podIPs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["ip"].as_str())
        .collect();
    if ips.is_empty() {
        p.kv(0, "IPs", "<none>");
    } else {
        p.line("IPs:");
        for ip in ips {
            p.kv(2, "IP", ip);
        }
    }
    let owners: Vec<String> = o["metadata"]["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["controller"] == Value::Bool(true))
        .map(|r| format!("{}/{}", s(&r["kind"], ""), s(&r["name"], "")))
        .collect();
    if !owners.is_empty() {
        p.kv(0, "Controlled By", owners.join(", "));
    }
    p.line("Containers:");
    let statuses: Vec<Value> = status["containerStatuses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for c in spec["containers"].as_array().into_iter().flatten() {
        let cs = statuses.iter().find(|x| x["name"] == c["name"]);
        container_section(p, "  ", c, cs);
    }
    let conds: Vec<Value> = status["conditions"].as_array().cloned().unwrap_or_default();
    if !conds.is_empty() {
        p.line("Conditions:");
        let mut rows = vec![vec!["  Type".to_string(), "Status".to_string()]];
        for c in conds {
            rows.push(vec![
                format!("  {}", s(&c["type"], "")),
                s(&c["status"], "").to_string(),
            ]);
        }
        for l in crate::output::align(&rows) {
            p.line(l);
        }
    }
    volumes_section(p, 0, spec);
    p.kv(0, "QoS Class", s(&status["qosClass"], "BestEffort"));
    p.map(0, "Node-Selectors", &spec["nodeSelector"]);
    tolerations_section(p, 0, spec);
}

/// One container of a pod (with its status, when there is one) or of a pod template;
/// `name_indent` prefixes the `name:` line.
fn container_section(p: &mut Page, name_indent: &str, c: &Value, cs: Option<&Value>) {
    p.line(format!("{name_indent}{}:", s(&c["name"], "")));
    if let Some(cs) = cs {
        p.kv(4, "Container ID", s(&cs["containerID"], ""));
    }
    p.kv(4, "Image", s(&c["image"], ""));
    if let Some(cs) = cs {
        p.kv(4, "Image ID", s(&cs["imageID"], ""));
    }
    let ports: Vec<String> = c["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|pt| format!("{}/{}", pt["containerPort"], s(&pt["protocol"], "TCP")))
        .collect();
    p.kv(4, "Port", or_none(ports.join(", ")));
    let hports: Vec<String> = c["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|pt| {
            format!(
                "{}/{}",
                pt["hostPort"].as_i64().unwrap_or(0),
                s(&pt["protocol"], "TCP")
            )
        })
        .collect();
    p.kv(4, "Host Port", or_none(hports.join(", ")));
    if let Some(cmd) = c["command"].as_array() {
        p.line("    Command:");
        for a in cmd {
            p.line(format!("      {}", s(a, "")));
        }
    }
    if let Some(args) = c["args"].as_array() {
        p.line("    Args:");
        for a in args {
            p.line(format!("      {}", s(a, "")));
        }
    }
    if let Some(cs) = cs {
        let (state, details) = container_state(&cs["state"]);
        p.kv(4, "State", state);
        for (k, v) in details {
            p.kv(6, &k, v);
        }
        if let Some(last) = cs
            .get("lastState")
            .filter(|l| l.as_object().is_some_and(|m| !m.is_empty()))
        {
            let (st, details) = container_state(last);
            p.kv(4, "Last State", st);
            for (k, v) in details {
                p.kv(6, &k, v);
            }
        }
        p.kv(
            4,
            "Ready",
            if cs["ready"] == Value::Bool(true) {
                "True"
            } else {
                "False"
            },
        );
        p.kv(
            4,
            "Restart Count",
            cs["restartCount"].as_i64().unwrap_or(0).to_string(),
        );
    }
    let env: Vec<String> = c["env"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| format!("{}:  {}", s(&e["name"], ""), s(&e["value"], "")))
        .collect();
    if env.is_empty() {
        p.kv(4, "Environment", "<none>");
    } else {
        p.line("    Environment:");
        for e in env {
            p.line(format!("      {e}"));
        }
    }
    let mounts: Vec<String> = c["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            format!(
                "{} from {} ({})",
                s(&m["mountPath"], ""),
                s(&m["name"], ""),
                if m["readOnly"] == Value::Bool(true) {
                    "ro"
                } else {
                    "rw"
                }
            )
        })
        .collect();
    if mounts.is_empty() {
        p.kv(4, "Mounts", "<none>");
    } else {
        p.line("    Mounts:");
        for m in mounts {
            p.line(format!("      {m}"));
        }
    }
}

/// The `Volumes:` of a pod spec (`indent` 0) or of a pod template's spec (`indent` 2).
fn volumes_section(p: &mut Page, indent: usize, spec: &Value) {
    let vols: Vec<Value> = spec["volumes"].as_array().cloned().unwrap_or_default();
    if vols.is_empty() {
        p.kv(indent, "Volumes", "<none>");
        return;
    }
    let pad = " ".repeat(indent);
    // kubectl indents a template's volume names by one more space than its `Volumes:`.
    let name_pad = if indent == 0 { "  " } else { "   " };
    p.line(format!("{pad}Volumes:"));
    for v in vols {
        p.line(format!("{name_pad}{}:", s(&v["name"], "")));
        let Some(m) = v.as_object() else { continue };
        for (k, src) in m.iter().filter(|(k, _)| *k != "name") {
            let ty = match k.as_str() {
                "emptyDir" => {
                    "EmptyDir (a temporary directory that shares a pod's lifetime)".to_string()
                }
                "hostPath" => "HostPath (bare host directory volume)".to_string(),
                "secret" => "Secret (a volume populated by a Secret)".to_string(),
                "configMap" => "ConfigMap (a volume populated by a ConfigMap)".to_string(),
                other => other.to_string(),
            };
            p.kv(4, "Type", ty);
            if let Some(sm) = src.as_object() {
                for (sk, sv) in sm {
                    let mut key = sk.clone();
                    if let Some(c) = key.get_mut(0..1) {
                        c.make_ascii_uppercase();
                    }
                    p.kv(
                        4,
                        &key,
                        sv.as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| sv.to_string()),
                    );
                }
            }
        }
    }
}

/// The `Tolerations:` of a pod spec or a pod template's spec, one per line.
fn tolerations_section(p: &mut Page, indent: usize, spec: &Value) {
    let tol: Vec<String> = spec["tolerations"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            let mut x = s(&t["key"], "").to_string();
            if let Some(v) = t["value"].as_str() {
                x = format!("{x}={v}");
            }
            if let Some(e) = t["effect"].as_str() {
                x = format!("{x}:{e}");
            }
            if let Some(sec) = t["tolerationSeconds"].as_i64() {
                x = format!("{x} for {sec}s");
            }
            x
        })
        .collect();
    // Not `or_none`: a key-less `Exists` toleration is an empty line, not `<none>`.
    p.kv(
        indent,
        "Tolerations",
        if tol.is_empty() {
            "<none>".into()
        } else {
            tol.join("\n")
        },
    );
}

fn describe_service(p: &mut Page, o: &Value, endpoints: Option<&Value>) {
    let spec = &o["spec"];
    p.kv(0, "Name", meta::name(o));
    p.kv(0, "Namespace", meta::namespace(o));
    p.map(0, "Labels", &o["metadata"]["labels"]);
    p.map(0, "Annotations", &o["metadata"]["annotations"]);
    p.kv(0, "Selector", selector_string(&spec["selector"]));
    p.kv(0, "Type", s(&spec["type"], "ClusterIP"));
    p.kv(
        0,
        "IP Family Policy",
        s(&spec["ipFamilyPolicy"], "SingleStack"),
    );
    let fams: Vec<&str> = spec["ipFamilies"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    p.kv(
        0,
        "IP Families",
        if fams.is_empty() {
            "IPv4".to_string()
        } else {
            fams.join(",")
        },
    );
    p.kv(0, "IP", s(&spec["clusterIP"], "None"));
    let ips: Vec<&str> = spec["clusterIPs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    p.kv(
        0,
        "IPs",
        if ips.is_empty() {
            s(&spec["clusterIP"], "<none>").to_string()
        } else {
            ips.join(",")
        },
    );
    if let Some(ext) = spec["externalIPs"].as_array().filter(|e| !e.is_empty()) {
        p.kv(
            0,
            "External IPs",
            ext.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(","),
        );
    }
    let ingress: Vec<&str> = o["status"]["loadBalancer"]["ingress"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["ip"].as_str().or(i["hostname"].as_str()))
        .collect();
    if !ingress.is_empty() {
        p.kv(0, "LoadBalancer Ingress", ingress.join(", "));
    }
    for port in spec["ports"].as_array().into_iter().flatten() {
        let name = s(&port["name"], "<unset>");
        let proto = s(&port["protocol"], "TCP");
        p.kv(0, "Port", format!("{name}  {}/{proto}", port["port"]));
        let tp = match &port["targetPort"] {
            Value::Null => port["port"].to_string(),
            Value::String(x) => x.clone(),
            other => other.to_string(),
        };
        p.kv(0, "TargetPort", format!("{tp}/{proto}"));
        if let Some(np) = port["nodePort"].as_i64() {
            p.kv(0, "NodePort", format!("{name}  {np}/{proto}"));
        }
        let eps = endpoints
            .map(|ep| endpoints_for_port(ep, port["name"].as_str()))
            .unwrap_or_else(|| "<none>".into());
        p.kv(0, "Endpoints", eps);
    }
    p.kv(0, "Session Affinity", s(&spec["sessionAffinity"], "None"));
    if let Some(e) = spec["externalTrafficPolicy"].as_str() {
        p.kv(0, "External Traffic Policy", e);
    }
    p.kv(
        0,
        "Internal Traffic Policy",
        s(&spec["internalTrafficPolicy"], "Cluster"),
    );
}

fn endpoints_for_port(ep: &Value, port_name: Option<&str>) -> String {
    let mut addrs = Vec::new();
    for subset in ep["subsets"].as_array().into_iter().flatten() {
        let ports: Vec<&Value> = subset["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| match port_name {
                Some(n) => p["name"].as_str() == Some(n),
                None => true,
            })
            .collect();
        for p in ports {
            for a in subset["addresses"].as_array().into_iter().flatten() {
                addrs.push(format!("{}:{}", s(&a["ip"], ""), p["port"]));
            }
        }
    }
    if addrs.is_empty() {
        return "<none>".into();
    }
    let more = addrs.len().saturating_sub(3);
    let mut text = addrs.into_iter().take(3).collect::<Vec<_>>().join(",");
    if more > 0 {
        text.push_str(&format!(" + {more} more..."));
    }
    text
}

fn describe_rc(p: &mut Page, o: &Value, pods: &[Value]) {
    let spec = &o["spec"];
    p.kv(0, "Name", meta::name(o));
    p.kv(0, "Namespace", meta::namespace(o));
    p.kv(0, "Selector", selector_string(&spec["selector"]));
    p.map(0, "Labels", &o["metadata"]["labels"]);
    p.map(0, "Annotations", &o["metadata"]["annotations"]);
    p.kv(
        0,
        "Replicas",
        format!(
            "{} current / {} desired",
            o["status"]["replicas"].as_i64().unwrap_or(0),
            spec["replicas"].as_i64().unwrap_or(1)
        ),
    );
    let count = |phase: &str| {
        pods.iter()
            .filter(|p| p["status"]["phase"].as_str().unwrap_or("Pending") == phase)
            .count()
    };
    p.kv(
        0,
        "Pods Status",
        format!(
            "{} Running / {} Waiting / {} Succeeded / {} Failed",
            count("Running"),
            count("Pending"),
            count("Succeeded"),
            count("Failed")
        ),
    );
    p.line("Pod Template:");
    p.map(2, "Labels", &spec["template"]["metadata"]["labels"]);
    let tspec = &spec["template"]["spec"];
    p.line("  Containers:");
    for c in tspec["containers"].as_array().into_iter().flatten() {
        container_section(p, "   ", c, None);
    }
    volumes_section(p, 2, tspec);
    p.map(2, "Node-Selectors", &tspec["nodeSelector"]);
    tolerations_section(p, 2, tspec);
}

/// A Job as kubectl describes it: counts, times and the pods its selector finds.
fn describe_job(p: &mut Page, o: &Value, pods: &[Value], now: jiff::Timestamp) {
    let spec = &o["spec"];
    let st = &o["status"];
    p.kv(0, "Name", meta::name(o));
    p.kv(0, "Namespace", meta::namespace(o));
    p.kv(
        0,
        "Selector",
        xkube_api::table::format_label_selector(&spec["selector"]),
    );
    p.map(0, "Labels", &o["metadata"]["labels"]);
    p.map(0, "Annotations", &o["metadata"]["annotations"]);
    let int = |v: &Value| v.as_i64().map_or("<unset>".to_string(), |n| n.to_string());
    p.kv(0, "Parallelism", int(&spec["parallelism"]));
    p.kv(0, "Completions", int(&spec["completions"]));
    p.kv(
        0,
        "Completion Mode",
        s(&spec["completionMode"], "NonIndexed"),
    );
    p.kv(
        0,
        "Suspend",
        spec["suspend"].as_bool().unwrap_or(false).to_string(),
    );
    p.kv(0, "Backoff Limit", int(&spec["backoffLimit"]));
    if let Some(ttl) = spec["ttlSecondsAfterFinished"].as_i64() {
        p.kv(0, "TTL Seconds After Finished", ttl.to_string());
    }
    let start = st["startTime"].as_str().and_then(meta::parse_time);
    if start.is_some() {
        p.kv(0, "Start Time", time_string(&st["startTime"]));
    }
    let done = st["completionTime"].as_str().and_then(meta::parse_time);
    if done.is_some() {
        p.kv(0, "Completed At", time_string(&st["completionTime"]));
    }
    if let Some(s0) = start {
        let end = done.unwrap_or(now);
        p.kv(
            0,
            "Duration",
            xkube_api::table::human_duration(end.as_second() - s0.as_second()),
        );
    }
    if let Some(ads) = spec["activeDeadlineSeconds"].as_i64() {
        p.kv(0, "Active Deadline Seconds", format!("{ads}s"));
    }
    let phase = |ph: &str| {
        pods.iter()
            .filter(|p| p["status"]["phase"].as_str().unwrap_or("Pending") == ph)
            .count()
    };
    let active: Vec<&Value> = pods
        .iter()
        .filter(|p| {
            !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
                && p["metadata"]["deletionTimestamp"].is_null()
        })
        .collect();
    let ready = active
        .iter()
        .filter(|p| {
            p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
        .count();
    p.kv(
        0,
        "Pods Statuses",
        format!(
            "{} Active ({ready} Ready) / {} Succeeded / {} Failed",
            active.len(),
            phase("Succeeded"),
            phase("Failed")
        ),
    );
    p.line("Pod Template:");
    p.map(2, "Labels", &spec["template"]["metadata"]["labels"]);
    let tspec = &spec["template"]["spec"];
    p.line("  Containers:");
    for c in tspec["containers"].as_array().into_iter().flatten() {
        container_section(p, "   ", c, None);
    }
    volumes_section(p, 2, tspec);
    p.map(2, "Node-Selectors", &tspec["nodeSelector"]);
    tolerations_section(p, 2, tspec);
}

fn describe_node(p: &mut Page, o: &Value, pods: &[Value], now: jiff::Timestamp) {
    let status = &o["status"];
    p.kv(0, "Name", meta::name(o));
    p.kv(0, "Roles", "<none>");
    p.map(0, "Labels", &o["metadata"]["labels"]);
    p.map(0, "Annotations", &o["metadata"]["annotations"]);
    p.kv(
        0,
        "CreationTimestamp",
        time_string(&o["metadata"]["creationTimestamp"]),
    );
    let taints: Vec<String> = o["spec"]["taints"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            let v = t["value"]
                .as_str()
                .map(|v| format!("={v}"))
                .unwrap_or_default();
            format!("{}{v}:{}", s(&t["key"], ""), s(&t["effect"], ""))
        })
        .collect();
    p.kv(0, "Taints", or_none(taints.join("\n")));
    p.kv(
        0,
        "Unschedulable",
        if o["spec"]["unschedulable"] == Value::Bool(true) {
            "true"
        } else {
            "false"
        },
    );
    p.line("Conditions:");
    let mut rows = vec![
        [
            "  Type",
            "Status",
            "LastHeartbeatTime",
            "LastTransitionTime",
            "Reason",
            "Message",
        ]
        .map(String::from)
        .to_vec(),
        [
            "  ----",
            "------",
            "-----------------",
            "------------------",
            "------",
            "-------",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for c in status["conditions"].as_array().into_iter().flatten() {
        rows.push(vec![
            format!("  {}", s(&c["type"], "")),
            s(&c["status"], "").to_string(),
            time_string(&c["lastHeartbeatTime"]),
            time_string(&c["lastTransitionTime"]),
            s(&c["reason"], "").to_string(),
            s(&c["message"], "").to_string(),
        ]);
    }
    for l in crate::output::align(&rows) {
        p.line(l);
    }
    p.line("Addresses:");
    for a in status["addresses"].as_array().into_iter().flatten() {
        p.kv(2, s(&a["type"], ""), s(&a["address"], ""));
    }
    for (title, key) in [("Capacity", "capacity"), ("Allocatable", "allocatable")] {
        p.line(format!("{title}:"));
        for (k, v) in meta::string_map(&status[key]) {
            p.kv(2, &k, v);
        }
    }
    p.line("System Info:");
    let info = &status["nodeInfo"];
    for (label, key) in [
        ("Machine ID", "machineID"),
        ("System UUID", "systemUUID"),
        ("Boot ID", "bootID"),
        ("Kernel Version", "kernelVersion"),
        ("OS Image", "osImage"),
        ("Operating System", "operatingSystem"),
        ("Architecture", "architecture"),
        ("Container Runtime Version", "containerRuntimeVersion"),
        ("Kubelet Version", "kubeletVersion"),
        ("Kube-Proxy Version", "kubeProxyVersion"),
    ] {
        p.kv(2, label, s(&info[key], ""));
    }
    if let Some(c) = o["spec"]["podCIDR"].as_str() {
        p.kv(0, "PodCIDR", c);
    }
    let running: Vec<&Value> = pods
        .iter()
        .filter(|p| !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")))
        .collect();
    p.line(format!(
        "Non-terminated Pods:          ({} in total)",
        running.len()
    ));
    let mut rows = vec![
        [
            "  Namespace",
            "Name",
            "CPU Requests",
            "CPU Limits",
            "Memory Requests",
            "Memory Limits",
            "Age",
        ]
        .map(String::from)
        .to_vec(),
        [
            "  ---------",
            "----",
            "------------",
            "----------",
            "---------------",
            "-------------",
            "---",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for pod in &running {
        let first = &pod["spec"]["containers"][0]["resources"];
        rows.push(vec![
            format!("  {}", meta::namespace(pod)),
            meta::name(pod).to_string(),
            s(&first["requests"]["cpu"], "0").to_string(),
            s(&first["limits"]["cpu"], "0").to_string(),
            s(&first["requests"]["memory"], "0").to_string(),
            s(&first["limits"]["memory"], "0").to_string(),
            age(&pod["metadata"]["creationTimestamp"], now),
        ]);
    }
    for l in crate::output::align(&rows) {
        p.line(l);
    }
    p.line("Allocated resources:");
    p.line("  (Total limits may be over 100 percent, i.e., overcommitted.)");
}

fn describe_namespace(p: &mut Page, o: &Value, quotas: &[Value], limits: &[Value]) {
    p.kv(0, "Name", meta::name(o));
    p.map(0, "Labels", &o["metadata"]["labels"]);
    p.map(0, "Annotations", &o["metadata"]["annotations"]);
    p.kv(0, "Status", s(&o["status"]["phase"], "Active"));
    if quotas.is_empty() {
        p.line("");
        p.line("No resource quota.");
    } else {
        for q in quotas {
            p.line("");
            p.line("Resource Quotas");
            p.kv(2, "Name", meta::name(q));
            let mut rows = vec![
                vec!["  Resource".to_string(), "Used".into(), "Hard".into()],
                vec!["  --------".to_string(), "---".into(), "---".into()],
            ];
            for (k, v) in meta::string_map(&q["spec"]["hard"]) {
                let used = q["status"]["used"][&k].as_str().unwrap_or("0").to_string();
                rows.push(vec![format!("  {k}"), used, v]);
            }
            for l in crate::output::align(&rows) {
                p.line(l);
            }
        }
    }
    p.line("");
    if limits.is_empty() {
        p.line("No LimitRange resource.");
    } else {
        for l in limits {
            p.line(format!("Resource Limits: {}", meta::name(l)));
        }
    }
}

fn describe_endpoints(p: &mut Page, o: &Value) {
    p.kv(0, "Name", meta::name(o));
    p.kv(0, "Namespace", meta::namespace(o));
    p.map(0, "Labels", &o["metadata"]["labels"]);
    p.map(0, "Annotations", &o["metadata"]["annotations"]);
    p.line("Subsets:");
    for subset in o["subsets"].as_array().into_iter().flatten() {
        let ips = |k: &str| {
            let v: Vec<&str> = subset[k]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a["ip"].as_str())
                .collect();
            if v.is_empty() {
                "<none>".to_string()
            } else {
                v.join(",")
            }
        };
        p.kv(2, "Addresses", ips("addresses"));
        p.kv(2, "NotReadyAddresses", ips("notReadyAddresses"));
        p.line("  Ports:");
        let mut rows = vec![
            vec!["    Name".to_string(), "Port".into(), "Protocol".into()],
            vec!["    ----".to_string(), "----".into(), "--------".into()],
        ];
        for port in subset["ports"].as_array().into_iter().flatten() {
            rows.push(vec![
                format!("    {}", s(&port["name"], "<unset>")),
                port["port"].to_string(),
                s(&port["protocol"], "TCP").to_string(),
            ]);
        }
        for l in crate::output::align(&rows) {
            p.line(l);
        }
        p.line("");
    }
}

fn describe_secret(p: &mut Page, o: &Value) {
    use base64::Engine;
    p.kv(0, "Name", meta::name(o));
    p.kv(0, "Namespace", meta::namespace(o));
    p.map(0, "Labels", &o["metadata"]["labels"]);
    p.map(0, "Annotations", &o["metadata"]["annotations"]);
    p.line("");
    p.kv(0, "Type", s(&o["type"], "Opaque"));
    p.line("");
    p.line("Data");
    p.line("====");
    if let Some(d) = o["data"].as_object() {
        for (k, v) in d {
            let n = v
                .as_str()
                .and_then(|x| base64::engine::general_purpose::STANDARD.decode(x).ok())
                .map_or(0, |b| b.len());
            p.line(format!("{k}:  {n} bytes"));
        }
    }
}

fn describe_generic(p: &mut Page, o: &Value) -> anyhow::Result<()> {
    p.kv(0, "Name", meta::name(o));
    if !meta::namespace(o).is_empty() {
        p.kv(0, "Namespace", meta::namespace(o));
    }
    p.map(0, "Labels", &o["metadata"]["labels"]);
    p.map(0, "Annotations", &o["metadata"]["annotations"]);
    let mut rest = o.clone();
    if let Some(m) = rest.as_object_mut() {
        m.remove("metadata");
    }
    p.line(serde_yaml::to_string(&rest)?.trim_end());
    Ok(())
}

async fn events_section(
    p: &mut Page,
    client: &Client,
    o: &Value,
    kind: &str,
    now: jiff::Timestamp,
) {
    let Some(events_res) = crate::output::resolve("events") else {
        return;
    };
    let ns = meta::namespace(o);
    let ns = if ns.is_empty() { "default" } else { ns };
    let api = Api::<DynamicObject>::dynamic(client.clone(), events_res, Some(ns));
    let name = meta::name(o);
    let uid = meta::uid(o);
    let mut evs: Vec<Value> = match api
        .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await
    {
        Ok(l) => l.items.into_iter().map(|e| e.0).collect(),
        Err(_) => Vec::new(),
    };
    evs.retain(|e| {
        let io = &e["involvedObject"];
        io["name"] == Value::String(name.to_string())
            && io["kind"].as_str().is_none_or(|k| k == kind)
            && io["uid"].as_str().is_none_or(|u| u.is_empty() || u == uid)
    });
    if evs.is_empty() {
        p.kv(0, "Events", "<none>");
        return;
    }
    let last = |e: &Value| {
        e["lastTimestamp"]
            .as_str()
            .or(e["eventTime"].as_str())
            .or(e["metadata"]["creationTimestamp"].as_str())
            .unwrap_or("")
            .to_string()
    };
    evs.sort_by_key(last);
    p.line("Events:");
    let mut rows = vec![
        ["  Type", "Reason", "Age", "From", "Message"]
            .map(String::from)
            .to_vec(),
        ["  ----", "------", "----", "----", "-------"]
            .map(String::from)
            .to_vec(),
    ];
    for e in &evs {
        let count = e["count"].as_i64().unwrap_or(1);
        let first = e["firstTimestamp"].clone();
        let last_ts = Value::String(last(e));
        let age_s = if count > 1 && !first.is_null() {
            format!(
                "{} (x{count} over {})",
                age(&last_ts, now),
                age(&first, now)
            )
        } else {
            age(&last_ts, now)
        };
        let from = e["source"]["component"]
            .as_str()
            .or(e["reportingComponent"].as_str())
            .unwrap_or("")
            .to_string();
        rows.push(vec![
            format!("  {}", s(&e["type"], "Normal")),
            s(&e["reason"], "").to_string(),
            age_s,
            from,
            s(&e["message"], "").to_string(),
        ]);
    }
    for l in crate::output::align(&rows) {
        p.line(l);
    }
}

async fn list_values(
    client: &Client,
    plural: &str,
    ns: Option<&str>,
    lp: &ListParams,
) -> Vec<Value> {
    let Some(res) = crate::output::resolve(plural) else {
        return Vec::new();
    };
    Api::<DynamicObject>::dynamic(client.clone(), res, ns)
        .list(lp)
        .await
        .map(|l| l.items.into_iter().map(|o| o.0).collect())
        .unwrap_or_default()
}

async fn describe_one(client: &Client, res: &ResourceInfo, o: &Value) -> anyhow::Result<String> {
    let now = jiff::Timestamp::now();
    let mut p = Page::new();
    let ns = meta::namespace(o);
    match res.kind {
        "Pod" => describe_pod(&mut p, o),
        "Service" => {
            let ep = match crate::output::resolve("endpoints") {
                Some(r) => Api::<DynamicObject>::dynamic(client.clone(), r, Some(ns))
                    .get_opt(meta::name(o))
                    .await
                    .ok()
                    .flatten()
                    .map(|e| e.0),
                None => None,
            };
            describe_service(&mut p, o, ep.as_ref());
        }
        "ReplicationController" => {
            let pods = if meta::string_map(&o["spec"]["selector"]).is_empty() {
                Vec::new()
            } else {
                let sel = selector_string(&o["spec"]["selector"]);
                list_values(
                    client,
                    "pods",
                    Some(ns),
                    &ListParams::default().labels(&sel),
                )
                .await
            };
            describe_rc(&mut p, o, &pods);
        }
        "Node" => {
            let pods = list_values(
                client,
                "pods",
                None,
                &ListParams::default().fields(&format!("spec.nodeName={}", meta::name(o))),
            )
            .await;
            describe_node(&mut p, o, &pods, now);
        }
        "Namespace" => {
            let name = meta::name(o);
            let quotas =
                list_values(client, "resourcequotas", Some(name), &ListParams::default()).await;
            let limits =
                list_values(client, "limitranges", Some(name), &ListParams::default()).await;
            describe_namespace(&mut p, o, &quotas, &limits);
        }
        "Job" => {
            // The pods kubectl counts: those its selector finds.
            let sel = xkube_api::table::format_label_selector(&o["spec"]["selector"]);
            let pods = if sel == "<none>" {
                Vec::new()
            } else {
                list_values(
                    client,
                    "pods",
                    Some(ns),
                    &ListParams::default().labels(&sel),
                )
                .await
            };
            describe_job(&mut p, o, &pods, now);
        }
        "Endpoints" => describe_endpoints(&mut p, o),
        "Secret" => describe_secret(&mut p, o),
        _ => describe_generic(&mut p, o)?,
    }
    if !matches!(res.kind, "Secret" | "Namespace" | "Event") {
        events_section(&mut p, client, o, res.kind, now).await;
    }
    Ok(p.render())
}

/// `describe`.
pub async fn run(g: &Global, a: DescribeArgs) -> anyhow::Result<()> {
    let (client, default_ns) = g.client()?;
    let ns = if a.all_namespaces {
        None
    } else {
        Some(default_ns.as_str())
    };
    let mut pages = Vec::new();
    let mut errors = Vec::new();
    for t in targets(&a.args)? {
        let api = Api::<DynamicObject>::dynamic(client.clone(), t.res, ns);
        if t.names.is_empty() {
            let lp = ListParams {
                label_selector: a.selector.clone(),
                ..ListParams::default()
            };
            for o in api.list(&lp).await.map_err(|e| api_err(e, &client))?.items {
                pages.push(describe_one(&client, t.res, &o.0).await?);
            }
        } else {
            for n in &t.names {
                match api.get(n).await {
                    Ok(o) => pages.push(describe_one(&client, t.res, &o.0).await?),
                    Err(e) if e.is_not_found() => {
                        // kubectl falls back to a name prefix.
                        let list = api
                            .list(&ListParams::default())
                            .await
                            .map_err(|e| api_err(e, &client))?;
                        let matches: Vec<_> = list
                            .items
                            .into_iter()
                            .filter(|o| meta::name(&o.0).starts_with(n.as_str()))
                            .collect();
                        if matches.is_empty() {
                            errors.push(describe_error(&e, client.base_url()));
                        }
                        for o in matches {
                            pages.push(describe_one(&client, t.res, &o.0).await?);
                        }
                    }
                    Err(e) => errors.push(describe_error(&e, client.base_url())),
                }
            }
        }
    }
    print!("{}", pages.join("\n\n"));
    if !errors.is_empty() {
        return Err(Reported(errors.join("\n")).into());
    }
    if pages.is_empty() {
        match ns {
            Some(n) => eprintln!("No resources found in {n} namespace."),
            None => eprintln!("No resources found"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rc_template_shows_its_mounts_volumes_and_tolerations() {
        let rc = json!({"metadata": {"name": "r", "namespace": "d"},
            "spec": {"replicas": 1, "selector": {"app": "w"}, "template": {
                "metadata": {"labels": {"app": "w"}},
                "spec": {"containers": [{"name": "c1", "image": "img",
                        "volumeMounts": [{"mountPath": "/d", "name": "v1", "readOnly": true}]}],
                    "volumes": [{"name": "v1", "emptyDir": {}}],
                    "tolerations": [{"key": "k", "value": "v", "effect": "NoSchedule"}]}}}});
        let mut p = Page::new();
        describe_rc(&mut p, &rc, &[]);
        let d = p.render();
        for want in [
            "  Containers:\n   c1:\n",
            "    Mounts:\n      /d from v1 (ro)\n",
            "  Volumes:\n   v1:\n    Type:",
            "  Tolerations:     k=v:NoSchedule\n",
        ] {
            assert!(d.contains(want), "describe rc lacks {want:?}:\n{d}");
        }
    }
    #[test]
    fn job_shows_kubectls_pods_statuses_line() {
        let job = json!({"metadata": {"name": "pi", "namespace": "d"},
            "spec": {"parallelism": 2, "completions": 3, "backoffLimit": 6,
                "selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": "u"}},
                "template": {"spec": {"containers": [{"name": "c", "image": "img"}]}}},
            "status": {"startTime": "2024-01-01T00:00:00Z", "completionTime": "2024-01-01T00:00:40Z"}});
        let pod = |phase: &str, ready: bool| {
            json!({"status": {"phase": phase,
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}})
        };
        let pods = [
            pod("Running", true),
            pod("Pending", false),
            pod("Succeeded", false),
            pod("Failed", false),
        ];
        let mut p = Page::new();
        describe_job(&mut p, &job, &pods, jiff::Timestamp::now());
        let d = p.render();
        for want in [
            "Selector:         batch.kubernetes.io/controller-uid=u\n",
            "Completions:      3\n",
            "Duration:         40s\n",
            "Pods Statuses:    2 Active (1 Ready) / 1 Succeeded / 1 Failed\n",
        ] {
            assert!(d.contains(want), "describe job lacks {want:?}:\n{d}");
        }
    }
}
