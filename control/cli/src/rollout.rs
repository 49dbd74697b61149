//! `rollout status|history|undo|pause|resume|restart` and `set image` for Deployments, as
//! kubectl does them: status reads what the deployment controller reports, undo copies an
//! old ReplicaSet's template back, pause/resume/restart patch the Deployment.

use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use serde_json::{Value, json};
use xkube_client::{Api, Client, ListParams, Object, Patch};

use crate::get::targets;
use crate::output::message;
use crate::{Global, Reported, api_err};

const REVISION: &str = "deployment.kubernetes.io/revision";
const CHANGE_CAUSE: &str = "kubernetes.io/change-cause";

/// `rollout` subcommands.
#[derive(Debug, Subcommand)]
pub enum RolloutCmd {
    /// Show the status of the rollout.
    Status(StatusArgs),
    /// View rollout history.
    History(HistoryArgs),
    /// Roll back to a previous rollout.
    Undo(UndoArgs),
    /// Mark the provided resource as paused.
    Pause(TargetArgs),
    /// Resume a paused resource.
    Resume(TargetArgs),
    /// Restart a resource (its pods are replaced by a new rollout).
    Restart(TargetArgs),
}

/// A Deployment: `deployment/NAME` or `deployment NAME`.
#[derive(Debug, Args)]
pub struct TargetArgs {
    /// TYPE NAME or TYPE/NAME.
    args: Vec<String>,
}

/// `rollout status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// TYPE NAME or TYPE/NAME.
    args: Vec<String>,
    /// Pin to a specific revision; fail if it is not the current one.
    #[arg(long, default_value_t = 0)]
    revision: i64,
    /// How long to wait before giving up (0: forever), e.g. `90s`.
    #[arg(long, default_value = "0s", value_parser = xkube_api::duration::parse)]
    timeout: Duration,
    /// Wait until the rollout finishes (false: report once).
    #[arg(short = 'w', long, default_value_t = true, action = clap::ArgAction::Set)]
    watch: bool,
}

/// `rollout history`.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// TYPE NAME or TYPE/NAME.
    args: Vec<String>,
    /// Show the pod template of this revision.
    #[arg(long, default_value_t = 0)]
    revision: i64,
}

/// `rollout undo`.
#[derive(Debug, Args)]
pub struct UndoArgs {
    /// TYPE NAME or TYPE/NAME.
    args: Vec<String>,
    /// The revision to roll back to (0: the previous one).
    #[arg(long, default_value_t = 0)]
    to_revision: i64,
}

/// `set image`.
#[derive(Debug, Args)]
pub struct SetImageArgs {
    /// TYPE/NAME (or TYPE NAME) followed by CONTAINER=IMAGE pairs.
    args: Vec<String>,
}

/// The Deployment a command names, with its API.
fn deployment(g: &Global, args: &[String]) -> anyhow::Result<(Client, Api<Deployment>, String)> {
    if args.is_empty() {
        return Err(Reported("error: required resource not specified".into()).into());
    }
    let t = targets(args)?;
    let [t] = t.as_slice() else {
        return Err(Reported("error: one resource at a time".into()).into());
    };
    if t.res.kind != "Deployment" {
        return Err(Reported(format!(
            "error: no rollout support for {}: only deployments",
            t.res.qualified_plural()
        ))
        .into());
    }
    let [name] = t.names.as_slice() else {
        return Err(Reported("error: one deployment name required".into()).into());
    };
    let (client, ns) = g.client()?;
    let api = Api::namespaced(client.clone(), &ns);
    Ok((client, api, name.clone()))
}

fn revision(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> i64 {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// The ReplicaSets `d` controls, by revision.
async fn history(client: &Client, d: &Deployment) -> anyhow::Result<Vec<ReplicaSet>> {
    let api: Api<ReplicaSet> = Api::namespaced(client.clone(), d.namespace());
    let sel = d
        .spec
        .as_ref()
        .map(|s| xkube_api::table::format_label_selector(&json!(s.selector)))
        .unwrap_or_default();
    let mut rss: Vec<ReplicaSet> = api
        .list(&ListParams::default().labels(&sel))
        .await
        .map_err(|e| api_err(e, client))?
        .items
        .into_iter()
        .filter(|rs| {
            rs.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|r| r.controller == Some(true) && r.uid == d.uid())
        })
        .collect();
    rss.sort_by_key(|rs| revision(&rs.metadata));
    Ok(rss)
}

/// What `rollout status` says about `d` now, and whether the rollout is done (kubectl's
/// `DeploymentStatusViewer`).
pub fn status_message(d: &Deployment) -> anyhow::Result<(String, bool)> {
    let name = d.name();
    let (Some(spec), Some(st)) = (d.spec.as_ref(), d.status.as_ref()) else {
        return Ok((
            "Waiting for deployment spec update to be observed...".into(),
            false,
        ));
    };
    if d.metadata.generation > st.observed_generation {
        return Ok((
            "Waiting for deployment spec update to be observed...".into(),
            false,
        ));
    }
    if let Some(c) = st
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Progressing")
        && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    {
        return Err(Reported(format!(
            "error: deployment \"{name}\" exceeded its progress deadline"
        ))
        .into());
    }
    let want = spec.replicas.unwrap_or(1);
    let updated = st.updated_replicas.unwrap_or(0);
    let replicas = st.replicas.unwrap_or(0);
    let available = st.available_replicas.unwrap_or(0);
    let msg = if updated < want {
        format!(
            "Waiting for deployment \"{name}\" rollout to finish: {updated} out of {want} new replicas have been updated..."
        )
    } else if replicas > updated {
        format!(
            "Waiting for deployment \"{name}\" rollout to finish: {} old replicas are pending termination...",
            replicas - updated
        )
    } else if available < updated {
        format!(
            "Waiting for deployment \"{name}\" rollout to finish: {available} of {updated} updated replicas are available..."
        )
    } else {
        return Ok((
            format!("deployment \"{name}\" successfully rolled out"),
            true,
        ));
    };
    Ok((msg, false))
}

/// `rollout ...`.
pub async fn run(g: &Global, cmd: RolloutCmd) -> anyhow::Result<()> {
    match cmd {
        RolloutCmd::Status(a) => status(g, a).await,
        RolloutCmd::History(a) => show_history(g, a).await,
        RolloutCmd::Undo(a) => undo(g, a).await,
        RolloutCmd::Pause(a) => set_paused(g, a, true).await,
        RolloutCmd::Resume(a) => set_paused(g, a, false).await,
        RolloutCmd::Restart(a) => restart(g, a).await,
    }
}

async fn status(g: &Global, a: StatusArgs) -> anyhow::Result<()> {
    let (client, api, name) = deployment(g, &a.args)?;
    let start = Instant::now();
    let mut last = String::new();
    loop {
        let d = api.get(&name).await.map_err(|e| api_err(e, &client))?;
        if a.revision > 0 && revision(&d.metadata) != a.revision {
            return Err(Reported(format!(
                "error: desired revision ({}) is different from the running revision ({})",
                a.revision,
                revision(&d.metadata)
            ))
            .into());
        }
        let (msg, done) = status_message(&d)?;
        if msg != last {
            println!("{msg}");
            last = msg;
        }
        if done || !a.watch {
            return Ok(());
        }
        if !a.timeout.is_zero() && start.elapsed() >= a.timeout {
            return Err(Reported("error: timed out waiting for the condition".into()).into());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn show_history(g: &Global, a: HistoryArgs) -> anyhow::Result<()> {
    let (client, api, name) = deployment(g, &a.args)?;
    let d = api.get(&name).await.map_err(|e| api_err(e, &client))?;
    let rss = history(&client, &d).await?;
    if a.revision > 0 {
        let Some(rs) = rss.iter().find(|rs| revision(&rs.metadata) == a.revision) else {
            return Err(Reported(format!(
                "error: unable to find the specified revision {}",
                a.revision
            ))
            .into());
        };
        let t = rs.spec.as_ref().and_then(|s| s.template.clone());
        println!("deployment \"{name}\" with revision #{}", a.revision);
        print!("{}", serde_yaml::to_string(&t)?);
        return Ok(());
    }
    println!("deployment \"{name}\"");
    println!("REVISION  CHANGE-CAUSE");
    for rs in &rss {
        let cause = rs
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(CHANGE_CAUSE))
            .map_or("<none>", String::as_str);
        println!("{:<10}{cause}", revision(&rs.metadata));
    }
    Ok(())
}

async fn undo(g: &Global, a: UndoArgs) -> anyhow::Result<()> {
    let (client, api, name) = deployment(g, &a.args)?;
    let d = api.get(&name).await.map_err(|e| api_err(e, &client))?;
    if d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false) {
        return Err(Reported(format!(
            "error: you cannot rollback a paused deployment; resume it first with 'xkubectl rollout resume deployment/{name}' and try again"
        ))
        .into());
    }
    let rss = history(&client, &d).await?;
    let current = revision(&d.metadata);
    let target = if a.to_revision > 0 {
        rss.iter()
            .find(|rs| revision(&rs.metadata) == a.to_revision)
    } else {
        rss.iter()
            .rev()
            .find(|rs| revision(&rs.metadata) != current && revision(&rs.metadata) > 0)
    };
    let Some(rs) = target else {
        return Err(Reported(if a.to_revision > 0 {
            format!(
                "error: unable to find specified revision {} in history",
                a.to_revision
            )
        } else {
            "error: no rollout history found for deployment \"".to_string() + &name + "\""
        })
        .into());
    };
    let mut template = serde_json::to_value(rs.spec.as_ref().and_then(|s| s.template.clone()))?;
    if let Some(l) = template["metadata"]["labels"].as_object_mut() {
        l.remove("pod-template-hash");
    }
    let now = serde_json::to_value(d.spec.as_ref().map(|s| &s.template))?;
    if template == now {
        println!(
            "{} (current template already matches revision {})",
            message(&DEPLOYMENTS, &name, "skipped rollback"),
            revision(&rs.metadata)
        );
        return Ok(());
    }
    let patch = json!([
        {"op": "test", "path": "/metadata/resourceVersion", "value": d.resource_version()},
        {"op": "replace", "path": "/spec/template", "value": template},
    ]);
    api.patch(&name, &Patch::Json(patch))
        .await
        .map_err(|e| api_err(e, &client))?;
    println!("{}", message(&DEPLOYMENTS, &name, "rolled back"));
    Ok(())
}

static DEPLOYMENTS: std::sync::LazyLock<&'static xkube_api::ResourceInfo> =
    std::sync::LazyLock::new(|| {
        xkube_api::resources::find("apps", "v1", "deployments").expect("deployments are served")
    });

async fn set_paused(g: &Global, a: TargetArgs, paused: bool) -> anyhow::Result<()> {
    let (client, api, name) = deployment(g, &a.args)?;
    let d = api.get(&name).await.map_err(|e| api_err(e, &client))?;
    let verb = if paused { "paused" } else { "resumed" };
    if d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false) == paused {
        return Err(Reported(format!(
            "error: deployments.apps \"{name}\" is {}",
            if paused {
                "already paused"
            } else {
                "not paused"
            }
        ))
        .into());
    }
    api.patch(&name, &Patch::Merge(json!({"spec": {"paused": paused}})))
        .await
        .map_err(|e| api_err(e, &client))?;
    println!("{}", message(&DEPLOYMENTS, &name, verb));
    Ok(())
}

async fn restart(g: &Global, a: TargetArgs) -> anyhow::Result<()> {
    let (client, api, name) = deployment(g, &a.args)?;
    let now = xkube_api::meta::format_time(jiff::Timestamp::now());
    let patch = json!({"spec": {"template": {"metadata": {"annotations": {
        "kubectl.kubernetes.io/restartedAt": now}}}}});
    api.patch(&name, &Patch::Merge(patch))
        .await
        .map_err(|e| api_err(e, &client))?;
    println!("{}", message(&DEPLOYMENTS, &name, "restarted"));
    Ok(())
}

/// `set image TYPE/NAME CONTAINER=IMAGE...` for pods and every kind with a pod template.
pub async fn set_image(g: &Global, a: SetImageArgs) -> anyhow::Result<()> {
    let (objects, pairs): (Vec<String>, Vec<String>) =
        a.args.iter().cloned().partition(|s| !s.contains('='));
    if objects.is_empty() || pairs.is_empty() {
        return Err(Reported(
            "error: set image needs TYPE/NAME (or TYPE NAME) and at least one CONTAINER=IMAGE"
                .into(),
        )
        .into());
    }
    let images: Vec<(&str, &str)> = pairs.iter().filter_map(|p| p.split_once('=')).collect();
    let (client, ns) = g.client()?;
    for t in targets(&objects)? {
        for name in &t.names {
            let api = Api::<xkube_client::DynamicObject>::dynamic(client.clone(), t.res, Some(&ns));
            let mut o = api.get(name).await.map_err(|e| api_err(e, &client))?.0;
            let spec = if t.res.kind == "Pod" {
                &mut o["spec"]
            } else if t.res.kind == "CronJob" {
                &mut o["spec"]["jobTemplate"]["spec"]["template"]["spec"]
            } else {
                &mut o["spec"]["template"]["spec"]
            };
            let mut changed = false;
            for (c, img) in &images {
                let mut found = false;
                for list in ["initContainers", "containers"] {
                    for ct in spec[list].as_array_mut().into_iter().flatten() {
                        if *c == "*" || ct["name"] == *c {
                            ct["image"] = Value::from(*img);
                            found = true;
                        }
                    }
                }
                if !found {
                    return Err(
                        Reported(format!("error: unable to find container named \"{c}\"")).into(),
                    );
                }
                changed = true;
            }
            if changed {
                api.replace(name, &xkube_client::DynamicObject(o))
                    .await
                    .map_err(|e| api_err(e, &client))?;
                println!("{}", message(t.res, name, "image updated"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(v: Value) -> Deployment {
        serde_json::from_value(v).expect("deployment")
    }

    #[test]
    fn status_messages_follow_kubectl() {
        let base = json!({"metadata": {"name": "web", "generation": 2},
                          "spec": {"replicas": 3, "selector": {}, "template": {}}});
        let mut v = base.clone();
        v["status"] = json!({"observedGeneration": 1});
        assert_eq!(
            status_message(&d(v)).expect("ok").0,
            "Waiting for deployment spec update to be observed..."
        );
        let mut v = base.clone();
        v["status"] = json!({"observedGeneration": 2, "updatedReplicas": 1, "replicas": 3});
        assert_eq!(
            status_message(&d(v)).expect("ok").0,
            "Waiting for deployment \"web\" rollout to finish: 1 out of 3 new replicas have been updated..."
        );
        let mut v = base.clone();
        v["status"] = json!({"observedGeneration": 2, "updatedReplicas": 3, "replicas": 4});
        assert!(
            status_message(&d(v))
                .expect("ok")
                .0
                .contains("1 old replicas are pending termination")
        );
        let mut v = base.clone();
        v["status"] = json!({"observedGeneration": 2, "updatedReplicas": 3, "replicas": 3,
                             "availableReplicas": 3});
        assert_eq!(
            status_message(&d(v)).expect("ok"),
            (
                "deployment \"web\" successfully rolled out".to_string(),
                true
            )
        );
        let mut v = base;
        v["status"] = json!({"observedGeneration": 2, "conditions": [{"type": "Progressing",
            "status": "False", "reason": "ProgressDeadlineExceeded"}]});
        assert!(status_message(&d(v)).is_err());
    }
}
