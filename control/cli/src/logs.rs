//! `logs`: a pod container's output through the apiserver's `pods/log` subresource.

use std::io::Write;

use clap::Args;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use xkube_client::{Api, LogParams};

use crate::{Global, Reported, api_err};

/// `logs` flags.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// POD, pod/POD, or POD CONTAINER.
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
    if pod.contains('/') {
        return Err(Reported(format!(
            "error: cannot get logs of {}: only pods have logs",
            a.args[0]
        ))
        .into());
    }
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
