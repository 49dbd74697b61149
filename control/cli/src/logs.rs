//! `logs`: a pod container's output through the apiserver's `pods/log` subresource.

use std::io::Write;

use clap::Args;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use xkube_client::{Api, Client, DynamicObject, ListParams, LogParams, Object};

use crate::{Global, Reported, api_err};

/// `logs` flags.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// POD, pod/POD, TYPE/NAME (a pod its selector picks: job/x, deployment/x, ...), or
    /// POD CONTAINER.
    #[arg(required = true, num_args = 1..=2)]
    args: Vec<String>,
    /// Container name.
    #[arg(short = 'c', long)]
    container: Option<String>,
    /// Stream the logs.
    #[arg(short = 'f', long)]
    follow: bool,
    /// Lines of recent log to show (-1: all).
    #[arg(long, default_value_t = -1)]
    tail: i64,
    /// The previous terminated container's logs.
    #[arg(short = 'p', long)]
    previous: bool,
    /// Include timestamps.
    #[arg(long)]
    timestamps: bool,
}

/// `logs`.
pub async fn run(g: &Global, a: LogsArgs) -> anyhow::Result<()> {
    let (client, ns) = g.client()?;
    let pod = a.args[0]
        .strip_prefix("pod/")
        .or_else(|| a.args[0].strip_prefix("pods/"))
        .unwrap_or(&a.args[0])
        .to_string();
    let pod = if pod.contains('/') {
        pod_of_workload(&client, &ns, &a.args[0]).await?
    } else {
        pod
    };
    let container = a.container.clone().or_else(|| a.args.get(1).cloned());
    let lp = LogParams {
        container,
        follow: a.follow,
        tail_lines: (a.tail >= 0).then_some(a.tail),
        previous: a.previous,
        timestamps: a.timestamps,
        since_seconds: None,
    };
    let api = Api::<Pod>::namespaced(client.clone(), &ns);
    let stream = api.logs(&pod, &lp).await.map_err(|e| api_err(e, &client))?;
    tokio::pin!(stream);
    let mut out = std::io::stdout().lock();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| api_err(e, &client))?;
        out.write_all(&chunk)?;
        out.flush()?;
    }
    Ok(())
}

/// The pod `logs TYPE/NAME` reads, as kubectl picks it: the first active pod (by name) the
/// workload's selector selects (Jobs, Deployments, ReplicaSets, ReplicationControllers,
/// DaemonSets).
pub(crate) async fn pod_of_workload(
    client: &Client,
    ns: &str,
    target: &str,
) -> anyhow::Result<String> {
    let (kind, name) = target.split_once('/').unwrap_or((target, ""));
    let res = crate::output::resolve_or_err(kind)?;
    if res.kind == "Pod" {
        return Ok(name.to_string());
    }
    let obj = Api::<DynamicObject>::dynamic(client.clone(), res, Some(ns))
        .get(name)
        .await
        .map_err(|e| api_err(e, client))?
        .0;
    let sel = &obj["spec"]["selector"];
    let selector = if sel.get("matchLabels").is_some() || sel.get("matchExpressions").is_some() {
        xkube_api::table::format_label_selector(sel)
    } else if sel.is_object() {
        xkube_api::table::selector_string(sel)
    } else {
        return Err(Reported(format!(
            "error: cannot get logs of {target}: a {} selects no pods",
            res.singular
        ))
        .into());
    };
    let mut pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| api_err(e, client))?
        .items;
    pods.sort_by(|a, b| {
        xkube_api::pod::is_active(b)
            .cmp(&xkube_api::pod::is_active(a))
            .then_with(|| a.name().cmp(b.name()))
    });
    match pods.first() {
        Some(p) => Ok(p.name().to_string()),
        None => Err(Reported(format!("error: no pods found for {target}")).into()),
    }
}
