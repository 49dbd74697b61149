//! `create deployment|job|cronjob`: objects from flags, shaped as kubectl's generators shape
//! them (labels `app: NAME`, container names from the image or the object's name,
//! `restartPolicy` Never for Jobs and OnFailure for CronJobs; `create job --from=cronjob/x`
//! instantiates the CronJob's template with the `cronjob.kubernetes.io/instantiate: manual`
//! annotation and the CronJob as owner).

use clap::{Args, Subcommand};
use serde_json::{Value, json};
use xkube_client::{Api, DynamicObject};

use crate::output::message;
use crate::{Global, Reported, api_err};

/// Kinds `create` makes from flags.
#[derive(Debug, Subcommand)]
pub enum CreateCmd {
    /// Create a deployment with the specified name.
    Deployment(DeploymentArgs),
    /// Create a job with the specified name.
    Job(JobArgs),
    /// Create a cronjob with the specified name.
    #[command(alias = "cj")]
    Cronjob(CronJobArgs),
}

/// `create deployment NAME --image=I [-- COMMAND ARGS...]`.
#[derive(Debug, Args)]
pub struct DeploymentArgs {
    /// The deployment's name.
    name: String,
    /// Image(s) to run (one container per image).
    #[arg(long, required = true)]
    image: Vec<String>,
    /// Number of replicas.
    #[arg(short = 'r', long, default_value_t = 1)]
    replicas: i32,
    /// The port the container exposes.
    #[arg(long)]
    port: Option<i32>,
    /// The command and its arguments (after `--`).
    #[arg(last = true)]
    command: Vec<String>,
}

/// `create job NAME (--image=I | --from=cronjob/X) [-- COMMAND ARGS...]`.
#[derive(Debug, Args)]
pub struct JobArgs {
    /// The job's name.
    name: String,
    /// Image to run.
    #[arg(long, conflicts_with = "from")]
    image: Option<String>,
    /// The CronJob whose template to instantiate (`cronjob/NAME`).
    #[arg(long)]
    from: Option<String>,
    /// The command and its arguments (after `--`).
    #[arg(last = true)]
    command: Vec<String>,
}

/// `create cronjob NAME --image=I --schedule=S [-- COMMAND ARGS...]`.
#[derive(Debug, Args)]
pub struct CronJobArgs {
    /// The cronjob's name.
    name: String,
    /// Image to run.
    #[arg(long, required = true)]
    image: String,
    /// A cron schedule (`*/1 * * * *`).
    #[arg(long, required = true)]
    schedule: String,
    /// Restart policy of its pods (OnFailure or Never).
    #[arg(long, default_value = "OnFailure")]
    restart: String,
    /// The command and its arguments (after `--`).
    #[arg(last = true)]
    command: Vec<String>,
}

/// A container name from an image reference, as kubectl's `create deployment`
/// (`registry:5000/team/web:v1` -> `web`).
pub fn container_name(image: &str) -> String {
    let last = image.rsplit('/').next().unwrap_or(image);
    let base = last.split(['@', ':']).next().unwrap_or(last);
    base.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect::<String>()
        .trim_matches('-')
        .to_string()
}

fn container(name: &str, image: &str, command: &[String]) -> Value {
    let mut c = json!({"name": name, "image": image});
    if !command.is_empty() {
        c["command"] = json!(command);
    }
    c
}

/// The Deployment `create deployment` sends (pure).
pub fn deployment(a: &DeploymentArgs) -> Value {
    let mut containers: Vec<Value> = a
        .image
        .iter()
        .map(|i| container(&container_name(i), i, &a.command))
        .collect();
    if let (Some(p), Some(first)) = (a.port, containers.first_mut()) {
        first["ports"] = json!([{"containerPort": p}]);
    }
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
           "metadata": {"name": a.name, "labels": {"app": a.name}},
           "spec": {"replicas": a.replicas, "selector": {"matchLabels": {"app": a.name}},
                    "template": {"metadata": {"labels": {"app": a.name}},
                                 "spec": {"containers": containers}}}})
}

/// The Job `create job --image` sends (pure).
pub fn job(name: &str, image: &str, command: &[String]) -> Value {
    json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
           "spec": {"template": {"spec": {"containers": [container(name, image, command)],
                                          "restartPolicy": "Never"}}}})
}

/// The CronJob `create cronjob` sends (pure).
pub fn cron_job(a: &CronJobArgs) -> Value {
    json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": a.name},
           "spec": {"schedule": a.schedule,
                    "jobTemplate": {"metadata": {"name": a.name},
                                    "spec": {"template": {"spec": {
                                        "containers": [container(&a.name, &a.image, &a.command)],
                                        "restartPolicy": a.restart}}}}}})
}

/// The Job `create job --from=cronjob/X` sends for the CronJob `cj` (pure).
pub fn job_from_cron_job(name: &str, cj: &Value) -> Value {
    let template = &cj["spec"]["jobTemplate"];
    let mut annotations = template["metadata"]["annotations"].clone();
    if !annotations.is_object() {
        annotations = json!({});
    }
    annotations["cronjob.kubernetes.io/instantiate"] = json!("manual");
    let mut meta = json!({"name": name, "annotations": annotations,
        "ownerReferences": [{"apiVersion": "batch/v1", "kind": "CronJob",
                             "name": cj["metadata"]["name"], "uid": cj["metadata"]["uid"],
                             "controller": true}]});
    if template["metadata"]["labels"].is_object() {
        meta["labels"] = template["metadata"]["labels"].clone();
    }
    json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": meta,
           "spec": template["spec"]})
}

/// `create deployment|job|cronjob`.
pub async fn create(g: &Global, cmd: CreateCmd) -> anyhow::Result<()> {
    let (client, ns) = g.client()?;
    let obj = match &cmd {
        CreateCmd::Deployment(a) => deployment(a),
        CreateCmd::Cronjob(a) => cron_job(a),
        CreateCmd::Job(a) => match (&a.image, &a.from) {
            (Some(image), None) => job(&a.name, image, &a.command),
            (None, Some(from)) => {
                let Some(cj_name) = from
                    .strip_prefix("cronjob/")
                    .or_else(|| from.strip_prefix("cronjobs/"))
                    .or_else(|| from.strip_prefix("cj/"))
                else {
                    return Err(Reported(format!(
                        "error: from must be an existing cronjob: {from}"
                    ))
                    .into());
                };
                let res = crate::output::resolve_or_err("cronjobs")?;
                let cj = Api::<DynamicObject>::dynamic(client.clone(), res, Some(&ns))
                    .get(cj_name)
                    .await
                    .map_err(|e| api_err(e, &client))?;
                job_from_cron_job(&a.name, &cj.0)
            }
            _ => {
                return Err(
                    Reported("error: either --image or --from must be specified".into()).into(),
                );
            }
        },
    };
    let res = crate::output::resource_of(&obj, "flags")?;
    let api = Api::<DynamicObject>::dynamic(client.clone(), res, Some(&ns));
    let created = api
        .create(&DynamicObject(obj))
        .await
        .map_err(|e| api_err(e, &client))?;
    println!(
        "{}",
        message(res, xkube_api::meta::name(&created.0), "created")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_names_come_from_the_image() {
        assert_eq!(container_name("nginx"), "nginx");
        assert_eq!(container_name("registry.local:5000/team/web:v1"), "web");
        assert_eq!(container_name("busybox@sha256:abc"), "busybox");
        assert_eq!(container_name("My_App"), "my-app");
    }

    #[test]
    fn a_job_from_a_cron_job_is_manual_and_owned() {
        let cj = json!({"metadata": {"name": "tick", "uid": "u1"},
            "spec": {"jobTemplate": {"spec": {"template": {"spec": {"containers": []}}}}}});
        let j = job_from_cron_job("now", &cj);
        assert_eq!(
            j["metadata"]["annotations"]["cronjob.kubernetes.io/instantiate"],
            "manual"
        );
        assert_eq!(j["metadata"]["ownerReferences"][0]["uid"], "u1");
        assert_eq!(j["spec"]["template"]["spec"]["containers"], json!([]));
    }

    #[test]
    fn generated_objects_have_kubectl_shapes() {
        let d = deployment(&DeploymentArgs {
            name: "web".into(),
            image: vec!["nginx:1.25".into()],
            replicas: 3,
            port: Some(80),
            command: Vec::new(),
        });
        assert_eq!(
            d["spec"]["selector"],
            json!({"matchLabels": {"app": "web"}})
        );
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"][0],
            json!({"name": "nginx", "image": "nginx:1.25", "ports": [{"containerPort": 80}]})
        );
        let j = job("hello", "busybox", &["echo".into(), "hi".into()]);
        assert_eq!(j["spec"]["template"]["spec"]["restartPolicy"], "Never");
        assert_eq!(
            j["spec"]["template"]["spec"]["containers"][0]["command"],
            json!(["echo", "hi"])
        );
    }
}
