//! `rolling-update`: kubectl's client-side rolling update of a replication controller
//! (maxUnavailable 0, maxSurge 1): scale the new controller up one step, wait, scale the old
//! one down as far as the available pods allow, until the new one has all replicas.

use std::time::Duration;

use clap::Args;
use serde_json::{Value, json};
use xkube_api::meta;
use xkube_client::{
    Api, Client, DeleteParams, DynamicObject, ListParams, Patch, PropagationPolicy,
};

use crate::manifest::read_all;
use crate::output::resolve_or_err;
use crate::{Global, Reported, api_err};

/// `rolling-update` flags.
#[derive(Debug, Args)]
pub struct RollingArgs {
    /// OLD_CONTROLLER_NAME [NEW_CONTROLLER_NAME].
    #[arg(required = true, num_args = 1..=2)]
    names: Vec<String>,
    /// File with the new controller.
    #[arg(short = 'f', long = "filename")]
    filename: Option<String>,
    /// New image for the containers (instead of -f).
    #[arg(long)]
    image: Option<String>,
    /// Container whose image changes (with --image; default: the only container).
    #[arg(long)]
    container: Option<String>,
    /// Time to wait between updating pods.
    #[arg(long, default_value = "1m", value_parser = xkube_api::duration::parse)]
    update_period: Duration,
    /// Time delay between polling for replication controller status.
    #[arg(long, default_value = "3s", value_parser = xkube_api::duration::parse)]
    poll_interval: Duration,
    /// Max time to wait for a replication controller to update before giving up.
    #[arg(long, default_value = "5m", value_parser = xkube_api::duration::parse)]
    timeout: Duration,
    /// Only print what would happen.
    #[arg(long)]
    dry_run: bool,
}

fn replicas(rc: &Value) -> i64 {
    rc["spec"]["replicas"].as_i64().unwrap_or(1)
}

fn is_ready(pod: &Value) -> bool {
    pod["metadata"]["deletionTimestamp"].is_null()
        && pod["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

struct Roller {
    client: Client,
    rcs: Api<DynamicObject>,
    pods: Api<DynamicObject>,
    poll: Duration,
    timeout: Duration,
}

impl Roller {
    async fn get(&self, name: &str) -> anyhow::Result<Value> {
        Ok(self
            .rcs
            .get(name)
            .await
            .map_err(|e| api_err(e, &self.client))?
            .0)
    }

    /// Ready pods selected by the controller's selector.
    async fn available(&self, rc: &Value) -> anyhow::Result<i64> {
        let sel: Vec<String> = meta::string_map(&rc["spec"]["selector"])
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        if sel.is_empty() {
            return Ok(0);
        }
        let list = self
            .pods
            .list(&ListParams::default().labels(&sel.join(",")))
            .await
            .map_err(|e| api_err(e, &self.client))?;
        Ok(list.items.iter().filter(|p| is_ready(&p.0)).count() as i64)
    }

    /// Sets the replica count and waits until the controller reports it.
    async fn scale_and_wait(&self, name: &str, n: i64) -> anyhow::Result<Value> {
        self.rcs
            .scale(name, n as i32)
            .await
            .map_err(|e| api_err(e, &self.client))?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let rc = self.get(name).await?;
            let generation = rc["metadata"]["generation"].as_i64().unwrap_or(0);
            let observed = rc["status"]["observedGeneration"]
                .as_i64()
                .unwrap_or(generation);
            if observed >= generation && rc["status"]["replicas"].as_i64().unwrap_or(0) == n {
                return Ok(rc);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Reported(format!(
                    "error: timed out waiting for \"{name}\" to be synced"
                ))
                .into());
            }
            tokio::time::sleep(self.poll).await;
        }
    }
}

fn template_hash(v: &Value) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    v.to_string().hash(&mut h);
    format!("{:x}", h.finish() & 0xffff_ffff)
}

/// `rolling-update`.
pub async fn run(g: &Global, a: RollingArgs) -> anyhow::Result<()> {
    let (client, ns) = g.client()?;
    let rc_res = resolve_or_err("replicationcontrollers")?;
    let pod_res = resolve_or_err("pods")?;
    let rcs = Api::<DynamicObject>::dynamic(client.clone(), rc_res, Some(&ns));
    let roller = Roller {
        client: client.clone(),
        rcs: rcs.clone(),
        pods: Api::<DynamicObject>::dynamic(client.clone(), pod_res, Some(&ns)),
        poll: a.poll_interval,
        timeout: a.timeout,
    };
    let old_name = a.names[0].clone();
    let mut old = roller.get(&old_name).await?;
    let mut new = match (&a.filename, &a.image) {
        (Some(_), Some(_)) => {
            return Err(
                Reported("error: --filename and --image can not both be specified".into()).into(),
            );
        }
        (None, None) => {
            return Err(Reported(
                "error: must specify --filename or --image for new controller".into(),
            )
            .into());
        }
        (Some(f), None) => {
            let docs = read_all(std::slice::from_ref(f), false)?;
            let [doc] = docs.as_slice() else {
                return Err(Reported(format!("error: {f} contains more than one object")).into());
            };
            if doc.object["kind"] != "ReplicationController" {
                return Err(Reported(format!(
                    "error: {f} contains a {} not a ReplicationController",
                    doc.object["kind"].as_str().unwrap_or("")
                ))
                .into());
            }
            let mut new = doc.object.clone();
            let new_name = meta::name(&new).to_string();
            if new_name == old_name {
                return Err(Reported(format!(
                    "error: {f} cannot have the same name as the existing ReplicationController {old_name}"
                ))
                .into());
            }
            if let Some(n) = a.names.get(1).filter(|n| **n != new_name) {
                return Err(Reported(format!(
                    "error: the new controller name {n} does not match the name in {f} ({new_name})"
                ))
                .into());
            }
            let old_sel = meta::string_map(&old["spec"]["selector"]);
            let new_sel = meta::string_map(&new["spec"]["selector"]);
            if !new_sel
                .iter()
                .any(|(k, v)| old_sel.get(k).is_some_and(|o| o != v))
            {
                return Err(Reported(format!(
                    "error: {f} must specify a matching key with non-equal value in Selector for {old_name}"
                ))
                .into());
            }
            if let Some(m) = new["metadata"].as_object_mut() {
                m.insert("namespace".into(), json!(ns));
            }
            new
        }
        (None, Some(image)) => {
            // Copy of the old controller with the new image; both get a `deployment` key
            // so neither adopts the other's pods.
            let mut new = old.clone();
            let containers = new["spec"]["template"]["spec"]["containers"]
                .as_array_mut()
                .ok_or_else(|| Reported("error: the controller has no containers".into()))?;
            let idx = match &a.container {
                Some(c) => containers
                    .iter()
                    .position(|x| x["name"] == json!(c))
                    .ok_or_else(|| Reported(format!("error: no container named {c:?}")))?,
                None if containers.len() == 1 => 0,
                None => {
                    return Err(Reported("error: must specify --container when the controller has several containers".into()).into());
                }
            };
            if containers[idx]["image"] == json!(image) {
                return Err(Reported(
                    "error: Specified --image must be distinct from existing container image"
                        .to_string(),
                )
                .into());
            }
            containers[idx]["image"] = json!(image);
            let new_hash = template_hash(&new["spec"]["template"]);
            let new_name = a
                .names
                .get(1)
                .cloned()
                .unwrap_or_else(|| format!("{old_name}-{new_hash}"));
            // Label the old pods and controller with their own deployment key first.
            let old_hash = template_hash(&old["spec"]["template"]);
            if old["spec"]["selector"]["deployment"].is_null() {
                let sel: Vec<String> = meta::string_map(&old["spec"]["selector"])
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                rcs.patch(
                    &old_name,
                    &Patch::Merge(json!({"spec": {"template": {"metadata": {"labels": {"deployment": old_hash}}}}})),
                )
                .await
                .map_err(|e| api_err(e, &client))?;
                for p in roller
                    .pods
                    .list(&ListParams::default().labels(&sel.join(",")))
                    .await
                    .map_err(|e| api_err(e, &client))?
                    .items
                {
                    roller
                        .pods
                        .patch(
                            meta::name(&p.0),
                            &Patch::Merge(
                                json!({"metadata": {"labels": {"deployment": old_hash}}}),
                            ),
                        )
                        .await
                        .map_err(|e| api_err(e, &client))?;
                }
                old = rcs
                    .patch(
                        &old_name,
                        &Patch::Merge(json!({"spec": {"selector": {"deployment": old_hash}}})),
                    )
                    .await
                    .map_err(|e| api_err(e, &client))?
                    .0;
            }
            new["spec"]["selector"]["deployment"] = json!(new_hash);
            new["spec"]["template"]["metadata"]["labels"]["deployment"] = json!(new_hash);
            new["metadata"] = json!({"name": new_name, "namespace": ns,
                "labels": old["metadata"]["labels"].clone()});
            new["spec"]["replicas"] = json!(replicas(&old));
            if let Some(m) = new.as_object_mut() {
                m.remove("status");
            }
            new
        }
    };
    let new_name = meta::name(&new).to_string();
    let desired = replicas(&new);
    let original = replicas(&old);
    if a.dry_run {
        println!("Rolling from:\n{old_name}\nTo:\n{new_name}");
        return Ok(());
    }
    // Create the new controller at 0, remembering the desired count.
    new["spec"]["replicas"] = json!(0);
    new["metadata"]["annotations"]["kubectl.kubernetes.io/desired-replicas"] =
        json!(desired.to_string());
    match rcs
        .get_opt(&new_name)
        .await
        .map_err(|e| api_err(e, &client))?
    {
        Some(existing) => {
            println!("Continuing update with existing controller {new_name}.");
            new = existing.0;
        }
        None => {
            new = rcs
                .create(&DynamicObject(new))
                .await
                .map_err(|e| api_err(e, &client))?
                .0;
            println!("Created {new_name}");
        }
    }
    rcs.patch(
        &old_name,
        &Patch::Merge(json!({"metadata": {"annotations": {"kubectl.kubernetes.io/next-controller-id": new_name}}})),
    )
    .await
    .map_err(|e| api_err(e, &client))?;

    let max_surge = 1;
    let min_available = desired;
    println!(
        "Scaling up {new_name} from {} to {desired}, scaling down {old_name} from {original} to 0 (keep {min_available} pods available, don't exceed {} pods)",
        replicas(&new),
        desired + max_surge
    );
    let mut progress_deadline = tokio::time::Instant::now() + a.timeout;
    let mut first = true;
    while replicas(&new) != desired || replicas(&old) != 0 {
        let before = (replicas(&new), replicas(&old));
        // Scale up as far as the surge allows.
        if replicas(&new) != desired {
            let mut inc = (desired + max_surge) - (replicas(&old) + replicas(&new));
            if replicas(&old) == 0 {
                inc = desired - replicas(&new);
            }
            if inc > 0 {
                let n = (replicas(&new) + inc).min(desired);
                println!("Scaling {new_name} up to {n}");
                new = roller.scale_and_wait(&new_name, n).await?;
            }
        }
        if !first || replicas(&new) > 0 {
            tokio::time::sleep(a.update_period).await;
        }
        first = false;
        // Scale down as far as availability allows: every pod removed from the old
        // controller may be an available one, so never go below min_available.
        if replicas(&old) > 0 {
            let avail = roller.available(&old).await? + roller.available(&new).await?;
            let mut dec = (avail - min_available).min(replicas(&old));
            let new_avail = roller.available(&new).await?;
            if replicas(&new) == desired && new_avail >= desired {
                dec = replicas(&old);
            }
            if dec > 0 {
                let m = replicas(&old) - dec;
                println!("Scaling {old_name} down to {m}");
                old = roller.scale_and_wait(&old_name, m).await?;
            }
        }
        if (replicas(&new), replicas(&old)) != before {
            progress_deadline = tokio::time::Instant::now() + a.timeout;
        } else if tokio::time::Instant::now() >= progress_deadline {
            return Err(Reported(
                "error: timed out waiting for any update progress to be made".to_string(),
            )
            .into());
        } else {
            tokio::time::sleep(a.poll_interval).await;
        }
    }
    println!("Update succeeded. Deleting {old_name}");
    rcs.delete(
        &old_name,
        &DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            ..DeleteParams::default()
        },
    )
    .await
    .map_err(|e| api_err(e, &client))?;
    // Drop the bookkeeping annotation from the new controller.
    let _ = rcs
        .patch(
            &new_name,
            &Patch::Merge(json!({"metadata": {"annotations": {"kubectl.kubernetes.io/desired-replicas": null}}})),
        )
        .await;
    println!("replicationcontroller \"{old_name}\" rolling updated to \"{new_name}\"");
    Ok(())
}
