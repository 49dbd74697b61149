//! The xkube controller-manager: level-triggered controllers that talk to the apiserver only
//! through the API (list + watch into reflector caches, writes via REST).
//!
//! - [`replication`]: exactly `spec.replicas` pods per ReplicationController and per
//!   ReplicaSet.
//! - [`deployment`]: ReplicaSets per Deployment template, rolled out and back.
//! - [`garbagecollector`]: owner references kept true (cascading and orphaning deletes).
//! - [`job`]: pods for every Job until its completions succeed (or it fails);
//!   [`cronjob`]: Jobs on a schedule; [`ttlafterfinished`]: finished Jobs deleted after their
//!   TTL. All three read time from a [`clock`].
//! - [`daemonset`]: one pod per eligible node for every DaemonSet, rolled on template
//!   changes.
//! - [`endpoints`]: one Endpoints object per selector Service.
//! - [`endpointslicemirroring`]: EndpointSlices mirrored from every Endpoints object.
//! - [`nodelifecycle`]: podCIDRs, Ready=Unknown and taints for silent nodes, eviction.
//! - [`namespace`]: empties and finalizes terminating namespaces.
//! - [`serviceaccount`]: a `default` ServiceAccount per namespace and token Secrets signed by
//!   `xkube_api::satoken::Signer` (the apiserver verifies them with the same key file).
//! - [`podgc`]: deletes terminated pods beyond a threshold.
//! - [`quota`]: keeps `ResourceQuota.status.used` current.
//!
//! Every controller runs on the runtime in `xkube_client::runtime` (work queue, informers,
//! event recorder, the `Controller` loop); the pod-owning controllers also share
//! [`podcontrol`] (claims, pod creates and deletes, expectations).
//!
//! Binaries build a client with [`Options::connection`] (`ConnectionFlags::client`) and call
//! [`run`] with the parsed [`Options`].

pub mod clock;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod endpointslicemirroring;
pub mod error;
pub mod garbagecollector;
pub mod job;
pub mod namespace;
pub mod nodelifecycle;
pub mod podcontrol;
pub mod podgc;
pub mod quota;
pub mod replication;
pub mod serviceaccount;
#[cfg(test)]
mod testutil;
pub mod token;
pub mod ttlafterfinished;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{
    ConfigMap, Endpoints, Namespace, Node, Pod, ReplicationController, ResourceQuota, Secret,
    Service, ServiceAccount,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tokio_util::sync::CancellationToken;
use xkube_client::Client;
use xkube_client::runtime::{EventRecorder, reflect};

pub use error::{Error, Result};

/// Every controller this crate runs, by its `--controllers` name.
pub const CONTROLLERS: &[&str] = &[
    "replication",
    "replicaset",
    "deployment",
    "garbagecollector",
    "daemonset",
    "job",
    "cronjob",
    "ttl-after-finished",
    "endpoints",
    "endpointslicemirroring",
    "nodelifecycle",
    "namespace",
    "serviceaccount",
    "serviceaccount-token",
    "podgc",
    "resourcequota",
];

/// Flags of `xkube controller-manager` (Kubernetes' names and defaults where they exist).
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Where the apiserver is.
    #[command(flatten)]
    pub connection: xkube_client::ConnectionFlags,
    /// Controllers to run: `*` for all, `name` to enable, `-name` to disable
    /// (replication, replicaset, deployment, garbagecollector, daemonset, job, cronjob,
    /// ttl-after-finished, endpoints, endpointslicemirroring, nodelifecycle, namespace, serviceaccount, serviceaccount-token,
    /// podgc, resourcequota).
    #[arg(long, value_delimiter = ',', default_value = "*")]
    pub controllers: Vec<String>,
    /// CIDR range of pods; nodes get consecutive subnets of it.
    #[arg(long, default_value = xkube_api::cluster::CLUSTER_CIDR, env = "XKUBE_CLUSTER_CIDR")]
    pub cluster_cidr: String,
    /// Allocate a podCIDR to every node from --cluster-cidr.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub allocate_node_cidrs: bool,
    /// Prefix length of node subnets.
    #[arg(long, default_value_t = 24)]
    pub node_cidr_mask_size: u8,
    /// How often node health is checked.
    #[arg(long, default_value = "5s", value_parser = xkube_api::duration::parse)]
    pub node_monitor_period: Duration,
    /// How long a node may go without posting status before it is Unknown.
    #[arg(long, default_value = "40s", value_parser = xkube_api::duration::parse)]
    pub node_monitor_grace_period: Duration,
    /// How long a node stays unhealthy before its pods are evicted.
    #[arg(long, default_value = "5m", value_parser = xkube_api::duration::parse)]
    pub pod_eviction_timeout: Duration,
    /// Terminated pods kept before the oldest are deleted (0 disables).
    #[arg(long, default_value_t = 12500)]
    pub terminated_pod_gc_threshold: usize,
    /// How often pod garbage collection runs.
    #[arg(long, default_value = "20s", value_parser = xkube_api::duration::parse)]
    pub pod_gc_period: Duration,
    /// How often every quota's usage is recomputed in full.
    #[arg(long, default_value = "5m", value_parser = xkube_api::duration::parse)]
    pub resource_quota_sync_period: Duration,
    /// Concurrent ReplicationController syncs.
    #[arg(long, default_value_t = 5)]
    pub concurrent_rc_syncs: usize,
    /// Concurrent ReplicaSet syncs.
    #[arg(long, default_value_t = 5)]
    pub concurrent_replicaset_syncs: usize,
    /// Concurrent Deployment syncs.
    #[arg(long, default_value_t = 5)]
    pub concurrent_deployment_syncs: usize,
    /// Concurrent garbage collector workers.
    #[arg(long, default_value_t = 20)]
    pub concurrent_gc_syncs: usize,
    /// Concurrent DaemonSet syncs.
    #[arg(long, default_value_t = 2)]
    pub concurrent_daemonset_syncs: usize,
    /// Concurrent Job syncs.
    #[arg(long, default_value_t = 5)]
    pub concurrent_job_syncs: usize,
    /// Concurrent CronJob syncs.
    #[arg(long, default_value_t = 5)]
    pub concurrent_cron_job_syncs: usize,
    /// Concurrent TTL-after-finished workers.
    #[arg(long, default_value_t = 5)]
    pub concurrent_ttl_after_finished_syncs: usize,
    /// Concurrent Endpoints syncs.
    #[arg(long, default_value_t = 5)]
    pub concurrent_endpoint_syncs: usize,
    /// Concurrent EndpointSlice mirroring syncs.
    #[arg(long, default_value_t = 5)]
    pub mirroring_concurrent_service_endpoint_syncs: usize,
    /// Concurrent namespace syncs.
    #[arg(long, default_value_t = 2)]
    pub concurrent_namespace_syncs: usize,
    /// Concurrent ResourceQuota syncs.
    #[arg(long, default_value_t = 5)]
    pub concurrent_resource_quota_syncs: usize,
    /// Concurrent ServiceAccount token syncs.
    #[arg(long, default_value_t = 5)]
    pub concurrent_serviceaccount_token_syncs: usize,
    /// Data directory (holds the service-account signing key).
    #[arg(long, default_value = "/var/lib/xkube", env = "XKUBE_DATA_DIR")]
    pub data_dir: PathBuf,
    /// PKCS#8 P-256 key signing service-account tokens (default
    /// `<data-dir>/service-account-key.pk8`, created when absent).
    #[arg(long)]
    pub service_account_private_key_file: Option<PathBuf>,
    /// CA bundle put into token secrets as `ca.crt`.
    #[arg(long)]
    pub root_ca_file: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            connection: xkube_client::ConnectionFlags::default(),
            controllers: vec!["*".into()],
            cluster_cidr: xkube_api::cluster::CLUSTER_CIDR.into(),
            allocate_node_cidrs: true,
            node_cidr_mask_size: 24,
            node_monitor_period: Duration::from_secs(5),
            node_monitor_grace_period: Duration::from_secs(40),
            pod_eviction_timeout: Duration::from_secs(300),
            terminated_pod_gc_threshold: 12500,
            pod_gc_period: Duration::from_secs(20),
            resource_quota_sync_period: Duration::from_secs(300),
            concurrent_rc_syncs: 5,
            concurrent_replicaset_syncs: 5,
            concurrent_deployment_syncs: 5,
            concurrent_gc_syncs: 20,
            concurrent_daemonset_syncs: 2,
            concurrent_job_syncs: 5,
            concurrent_cron_job_syncs: 5,
            concurrent_ttl_after_finished_syncs: 5,
            mirroring_concurrent_service_endpoint_syncs: 5,
            concurrent_endpoint_syncs: 5,
            concurrent_namespace_syncs: 2,
            concurrent_resource_quota_syncs: 5,
            concurrent_serviceaccount_token_syncs: 5,
            data_dir: PathBuf::from("/var/lib/xkube"),
            service_account_private_key_file: None,
            root_ca_file: None,
        }
    }
}

impl Options {
    /// Whether `--controllers` enables `name`.
    pub fn enabled(&self, name: &str) -> bool {
        let mut on = false;
        for c in &self.controllers {
            let c = c.trim();
            if c == "*" {
                on = true;
            } else if c == name {
                return true;
            } else if c.strip_prefix('-') == Some(name) {
                return false;
            }
        }
        on
    }

    /// The service-account signing key file.
    pub fn service_account_key_path(&self) -> PathBuf {
        self.service_account_private_key_file
            .clone()
            .unwrap_or_else(|| token::key_path(&self.data_dir))
    }
}

/// Runs the enabled controllers until `shutdown`.
pub async fn run(opts: Options, client: Client, shutdown: CancellationToken) -> Result<()> {
    for c in &opts.controllers {
        let name = c.trim().trim_start_matches('-');
        if name != "*" && !CONTROLLERS.contains(&name) {
            return Err(Error::Config(format!(
                "unknown controller {name:?} in --controllers"
            )));
        }
    }
    let cidrs = if opts.allocate_node_cidrs {
        Some(nodelifecycle::CidrAllocator::new(
            &opts.cluster_cidr,
            opts.node_cidr_mask_size,
        )?)
    } else {
        None
    };
    let signer = if opts.enabled("serviceaccount-token") {
        let path = opts.service_account_key_path();
        Some(Arc::new(
            tokio::task::spawn_blocking(move || xkube_api::satoken::Signer::load_or_create(&path))
                .await
                .map_err(|e| Error::Config(format!("loading the signing key: {e}")))??,
        ))
    } else {
        None
    };
    let root_ca = match &opts.root_ca_file {
        Some(p) => Some(std::fs::read(p).map_err(|source| Error::Io {
            op: "read",
            path: p.clone(),
            source,
        })?),
        None => None,
    };

    // One reflector per resource, shared by every controller.
    let sd = &shutdown;
    let pods = reflect::<Pod>(&client, sd);
    let need = |names: &[&str]| names.iter().any(|n| opts.enabled(n));
    let recorder = EventRecorder::new(client.clone(), "controller-manager");
    let mut tasks = tokio::task::JoinSet::new();

    let rcs = need(&["replication", "resourcequota"])
        .then(|| reflect::<ReplicationController>(&client, sd));
    let services = need(&["endpoints", "resourcequota"]).then(|| reflect::<Service>(&client, sd));
    let secrets =
        need(&["serviceaccount-token", "resourcequota"]).then(|| reflect::<Secret>(&client, sd));
    let namespaces =
        need(&["namespace", "serviceaccount"]).then(|| reflect::<Namespace>(&client, sd));
    let accounts = need(&["serviceaccount", "serviceaccount-token"])
        .then(|| reflect::<ServiceAccount>(&client, sd));
    let nodes = need(&["nodelifecycle", "daemonset"]).then(|| reflect::<Node>(&client, sd));

    if let (true, Some(rcs)) = (opts.enabled("replication"), rcs.clone()) {
        let c = replication::ReplicationManager::new(
            client.clone(),
            rcs,
            pods.clone(),
            recorder.clone(),
        );
        tasks.spawn(c.run(opts.concurrent_rc_syncs, shutdown.clone()));
    }
    let replica_sets =
        need(&["replicaset", "deployment"]).then(|| reflect::<ReplicaSet>(&client, sd));
    if let (true, Some(rss)) = (opts.enabled("replicaset"), replica_sets.clone()) {
        let c = replication::ReplicaSetController::new(
            client.clone(),
            rss,
            pods.clone(),
            recorder.clone(),
        );
        tasks.spawn(c.run(opts.concurrent_replicaset_syncs, shutdown.clone()));
    }
    if let (true, Some(rss)) = (opts.enabled("deployment"), replica_sets) {
        let c = deployment::DeploymentController::new(
            client.clone(),
            reflect::<Deployment>(&client, sd),
            rss,
            pods.clone(),
            recorder.clone(),
        );
        tasks.spawn(c.run(opts.concurrent_deployment_syncs, shutdown.clone()));
    }
    if opts.enabled("garbagecollector") {
        let c = garbagecollector::GarbageCollector::new(client.clone(), sd);
        tasks.spawn(c.run(opts.concurrent_gc_syncs, shutdown.clone()));
    }
    let jobs = need(&["job", "cronjob", "ttl-after-finished"]).then(|| reflect::<Job>(&client, sd));
    if let (true, Some(jobs)) = (opts.enabled("job"), jobs.clone()) {
        let c = job::JobController::new(
            client.clone(),
            jobs,
            pods.clone(),
            recorder.clone(),
            clock::system(),
        );
        tasks.spawn(c.run(opts.concurrent_job_syncs, shutdown.clone()));
    }
    if let (true, Some(jobs)) = (opts.enabled("cronjob"), jobs.clone()) {
        let c = cronjob::CronJobController::new(
            client.clone(),
            reflect::<CronJob>(&client, sd),
            jobs,
            recorder.clone(),
            clock::system(),
        );
        tasks.spawn(c.run(opts.concurrent_cron_job_syncs, shutdown.clone()));
    }
    if let (true, Some(jobs)) = (opts.enabled("ttl-after-finished"), jobs) {
        let c = ttlafterfinished::TtlAfterFinishedController::new(
            client.clone(),
            jobs,
            clock::system(),
        );
        tasks.spawn(c.run(opts.concurrent_ttl_after_finished_syncs, shutdown.clone()));
    }
    if let (true, Some(nodes)) = (opts.enabled("daemonset"), nodes.clone()) {
        let c = daemonset::DaemonSetController::new(
            client.clone(),
            reflect::<DaemonSet>(&client, sd),
            pods.clone(),
            nodes,
            recorder.clone(),
        );
        tasks.spawn(c.run(opts.concurrent_daemonset_syncs, shutdown.clone()));
    }
    let eps =
        need(&["endpoints", "endpointslicemirroring"]).then(|| reflect::<Endpoints>(&client, sd));
    if let (true, Some(services), Some(eps)) =
        (opts.enabled("endpoints"), services.clone(), eps.clone())
    {
        let c = endpoints::EndpointsController::new(client.clone(), services, pods.clone(), eps);
        tasks.spawn(c.run(opts.concurrent_endpoint_syncs, shutdown.clone()));
    }
    if let (true, Some(eps)) = (opts.enabled("endpointslicemirroring"), eps) {
        let c = endpointslicemirroring::EndpointSliceMirroringController::new(
            client.clone(),
            eps,
            reflect::<EndpointSlice>(&client, sd),
        );
        tasks.spawn(c.run(
            opts.mirroring_concurrent_service_endpoint_syncs,
            shutdown.clone(),
        ));
    }
    if let (true, Some(nodes)) = (opts.enabled("nodelifecycle"), nodes) {
        let cfg = nodelifecycle::NodeLifecycleConfig {
            cidrs,
            monitor_period: opts.node_monitor_period,
            grace_period: opts.node_monitor_grace_period,
            pod_eviction_timeout: opts.pod_eviction_timeout,
        };
        let c = nodelifecycle::NodeLifecycleController::new(
            client.clone(),
            nodes,
            pods.clone(),
            recorder.clone(),
            cfg,
        );
        tasks.spawn(c.run(shutdown.clone()));
    }
    if let (true, Some(ns)) = (opts.enabled("namespace"), namespaces.clone()) {
        let c = namespace::NamespaceController::new(client.clone(), ns);
        tasks.spawn(c.run(opts.concurrent_namespace_syncs, shutdown.clone()));
    }
    if let (true, Some(ns), Some(sa)) = (
        opts.enabled("serviceaccount"),
        namespaces.clone(),
        accounts.clone(),
    ) {
        let c = serviceaccount::ServiceAccountController::new(client.clone(), ns, sa);
        tasks.spawn(c.run(1, shutdown.clone()));
    }
    if let (Some(signer), Some(sa), Some(secrets)) = (signer, accounts.clone(), secrets.clone()) {
        let c = serviceaccount::TokenController::new(client.clone(), sa, secrets, signer, root_ca);
        tasks.spawn(c.run(opts.concurrent_serviceaccount_token_syncs, shutdown.clone()));
    }
    if opts.enabled("podgc") {
        let c = podgc::PodGcController::new(
            client.clone(),
            pods.clone(),
            opts.terminated_pod_gc_threshold,
            opts.pod_gc_period,
        );
        tasks.spawn(c.run(shutdown.clone()));
    }
    if let (true, Some(rcs), Some(services), Some(secrets)) =
        (opts.enabled("resourcequota"), rcs, services, secrets)
    {
        let caches = quota::QuotaCaches {
            quotas: reflect::<ResourceQuota>(&client, sd),
            pods: pods.clone(),
            services,
            rcs,
            secrets,
            configmaps: reflect::<ConfigMap>(&client, sd),
        };
        let c =
            quota::QuotaController::new(client.clone(), caches, opts.resource_quota_sync_period);
        tasks.spawn(c.run(opts.concurrent_resource_quota_syncs, shutdown.clone()));
    }
    tracing::info!(controllers = ?opts.controllers, "controller-manager running");
    shutdown.cancelled().await;
    while tasks.join_next().await.is_some() {}
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        opts: Options,
    }

    #[test]
    fn duration_flags_take_kubernetes_grammar() {
        let cli = Cli::parse_from(["cm", "--node-monitor-grace-period", "1m30s"]);
        assert_eq!(cli.opts.node_monitor_grace_period, Duration::from_secs(90));
        // As kube-controller-manager: a number without a unit is refused, not seconds.
        let Err(e) = Cli::try_parse_from(["cm", "--pod-eviction-timeout", "2"]) else {
            panic!("a duration without a unit was taken");
        };
        assert!(e.to_string().contains("missing unit in duration"), "{e}");
    }

    #[test]
    fn flags_have_kubernetes_defaults_and_controllers_can_be_disabled() {
        let cli = Cli::parse_from(["cm"]);
        assert_eq!(cli.opts.cluster_cidr, "10.244.0.0/16");
        assert_eq!(cli.opts.node_monitor_grace_period, Duration::from_secs(40));
        assert_eq!(cli.opts.pod_eviction_timeout, Duration::from_secs(300));
        assert!(CONTROLLERS.iter().all(|c| cli.opts.enabled(c)));
        let cli = Cli::parse_from(["cm", "--controllers=*,-podgc", "--pod-eviction-timeout=2s"]);
        assert!(!cli.opts.enabled("podgc"));
        assert!(cli.opts.enabled("replication"));
        assert_eq!(cli.opts.pod_eviction_timeout, Duration::from_secs(2));
        let cli = Cli::parse_from(["cm", "--controllers=endpoints"]);
        assert!(cli.opts.enabled("endpoints") && !cli.opts.enabled("replication"));
        assert_eq!(cli.opts.concurrent_daemonset_syncs, 2);
        let cli = Cli::parse_from([
            "cm",
            "--concurrent-daemonset-syncs=7",
            "--controllers=*,-daemonset",
        ]);
        assert_eq!(cli.opts.concurrent_daemonset_syncs, 7);
        assert!(!cli.opts.enabled("daemonset") && cli.opts.enabled("replication"));
    }
}
