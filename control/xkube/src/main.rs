//! `xkube`: one binary, one subcommand per component. Subcommands are thin: parse flags, build
//! the component from its crate, run it.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod agnhost;
mod demo;
mod pause;
mod signals;

/// The Kubernetes API level xkube speaks (the k8s-openapi version feature).
const KUBERNETES_API: &str = "v1.33";

#[derive(Parser)]
#[command(
    name = "xkube",
    version,
    about = "A Kubernetes-compatible cluster with an eBPF service dataplane"
)]
struct Cli {
    /// More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print version information.
    Version,
    /// Self-contained demonstrations on throwaway network namespaces.
    Demo {
        #[command(subcommand)]
        demo: demo::Demo,
    },
    /// The Kubernetes API server.
    Apiserver(Box<xkube_apiserver::Options>),
    /// The control plane in one process: apiserver, controller-manager and scheduler, each
    /// talking to the others only through the API.
    Server(Box<ServerArgs>),
    /// The controller-manager.
    ControllerManager(Box<xkube_controllers::Options>),
    /// The scheduler.
    Scheduler(Box<xkube_scheduler::Options>),
    /// The kubelet.
    Kubelet(Box<xkube_kubelet::Options>),
    /// The cluster DNS server (serves the cluster domain from Services, EndpointSlices and
    /// Pods; deployed as `kube-system/kube-dns`).
    Dns(Box<xkube_dns::Options>),
    /// The node agent: kubelet and proxy in one process.
    Agent(Box<AgentArgs>),
    /// A local multi-node cluster in network namespaces.
    Cluster {
        #[command(subcommand)]
        cmd: ClusterCmd,
    },
    /// The service proxy (eBPF dataplane).
    Proxy(Box<ProxyArgs>),
    /// Every proxy mode side by side on a local cluster: request/response, new connections,
    /// UDP, node CPU, programming latency; writes results.json, report.md and SVG plots.
    Bench(Box<xkube_bench::BenchOptions>),
    /// Test workload modelled on Kubernetes' agnhost: netexec (HTTP, TCP and UDP echo), dig and
    /// dnsperf.
    Agnhost(agnhost::Args),
    /// Holds a pod's namespaces: sleeps until SIGTERM/SIGINT, reaps children.
    Pause,
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// Build the cluster (removes a stale one of the same name first).
    Up(xkube_cluster::UpOptions),
    /// Remove everything the cluster made (safe to run twice).
    Down(xkube_cluster::NameOptions),
    /// Show the cluster's processes and nodes.
    Status(xkube_cluster::NameOptions),
    /// Restart one of the cluster's processes (`control-plane` or a node name).
    Restart {
        #[command(flatten)]
        cluster: xkube_cluster::NameOptions,
        /// The process: `control-plane` or a node name such as `xk-node1`.
        role: String,
        /// SIGKILL instead of SIGTERM.
        #[arg(long)]
        kill: bool,
        /// Bring a node's agent back in this proxy mode.
        #[arg(long, value_enum)]
        proxy_mode: Option<xkube_proxy::agent::ProxyMode>,
    },
    /// Copy images into every node's Docker Engine (`--runtime docker` clusters): by name
    /// from the host's engine, or from `docker save` / OCI archive files.
    LoadImage {
        #[command(flatten)]
        cluster: xkube_cluster::NameOptions,
        /// Image names (in the engine at --docker-host) or archive files.
        #[arg(required = true)]
        images: Vec<String>,
        /// The Docker Engine named images come from.
        #[arg(
            long,
            env = "DOCKER_HOST",
            default_value = "unix:///var/run/docker.sock"
        )]
        docker_host: String,
    },
    /// Run a command as a host process of a node: in its network namespace and cgroup (where
    /// the eBPF socket load balancer is attached), on this terminal.
    Exec {
        #[command(flatten)]
        cluster: xkube_cluster::NameOptions,
        /// The node: its name (`xk-node1`), `node1` or `1`.
        node: String,
        /// The command and its arguments (after `--`).
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// An interactive shell on a node (as `exec`).
    Shell {
        #[command(flatten)]
        cluster: xkube_cluster::NameOptions,
        /// The node: its name (`xk-node1`), `node1` or `1`.
        node: String,
    },
}

#[derive(clap::Args)]
// The whole control plane runs here, the serviceaccount controllers included, so the
// ServiceAccount plugin joins the apiserver's default chain (Kubernetes' recommended order).
#[command(mut_arg("admission_control", |a| a
    .default_value("NamespaceLifecycle,NamespaceExists,ServiceAccount,LimitRanger,ResourceQuota")
    .help("Ordered admission plugins: AlwaysAdmit, AlwaysDeny, NamespaceLifecycle, \
           NamespaceExists, SecurityContextDeny, ServiceAccount, LimitRanger, ResourceQuota \
           (the default is Kubernetes' recommended chain: this server runs the serviceaccount \
           and token controllers ServiceAccount needs)")
    .long_help(None)))]
struct ServerArgs {
    #[command(flatten)]
    apiserver: xkube_apiserver::Options,
    /// The cluster's pod network; the node controller gives each node a /24 of it.
    #[arg(long, env = "XKUBE_CLUSTER_CIDR", default_value = xkube_api::cluster::CLUSTER_CIDR)]
    cluster_cidr: String,
    /// How long a node may miss heartbeats before it is marked Unknown.
    #[arg(long, default_value = "40s")]
    node_monitor_grace_period: String,
    /// How long pods stay on an Unknown node before they are evicted.
    #[arg(long, default_value = "5m")]
    pod_eviction_timeout: String,
}

#[derive(clap::Args)]
struct AgentArgs {
    #[command(flatten)]
    kubelet: xkube_kubelet::Options,
    /// Service proxy mode.
    #[arg(long, env = "XKUBE_PROXY_MODE", value_enum, default_value_t = xkube_proxy::agent::ProxyMode::Ebpf)]
    proxy_mode: xkube_proxy::agent::ProxyMode,
    /// Run the kubelet only: remove every proxy mode's state from this node at start and
    /// serve no Services (a node whose Services something else handles; `xkube bench`'s
    /// no-proxy baseline).
    #[arg(long, env = "XKUBE_DISABLE_PROXY")]
    disable_proxy: bool,
    /// The node's uplink interface (XDP + tc egress).
    #[arg(long, env = "XKUBE_UPLINK", default_value = "eth0")]
    uplink: String,
    /// XDP attach mode on the uplink.
    #[arg(long, value_enum, default_value_t = xkube_proxy::agent::XdpAttach::Driver)]
    xdp_mode: xkube_proxy::agent::XdpAttach,
    /// Proxy metrics address.
    #[arg(long, default_value = xkube_api::cluster::PROXY_METRICS_ADDRESS)]
    proxy_metrics_bind_address: std::net::SocketAddr,
    /// Proxy health address.
    #[arg(long, default_value = xkube_api::cluster::PROXY_HEALTHZ_ADDRESS)]
    proxy_healthz_bind_address: std::net::SocketAddr,
    /// Kubeconfig of the proxy (default: the kubelet's `--kubeconfig`); Kubernetes gives the
    /// proxy its own identity, `system:kube-proxy`.
    #[arg(long, env = "XKUBE_PROXY_KUBECONFIG")]
    proxy_kubeconfig: Option<std::path::PathBuf>,
    /// cgroup v2 directory whose processes (pods and host processes) get socket-level load
    /// balancing; on a machine of its own, the cgroup v2 root. Default: the agent's own
    /// cgroup (the local cluster puts each node's agent and pods in one).
    #[arg(long, env = "XKUBE_PROXY_CGROUP")]
    proxy_cgroup: Option<std::path::PathBuf>,
    /// Proxy sync timing (--min-sync-period, --sync-period).
    #[command(flatten)]
    proxy_sync: xkube_proxy::agent::SyncOptions,
    /// The iptables mode's flags (--iptables-backend, --masquerade-all).
    #[command(flatten)]
    proxy_iptables: xkube_proxy::mode::iptables::IptablesOptions,
    #[command(flatten)]
    proxy_userspace: xkube_proxy::mode::userspace::UserspaceOptions,
}

/// Parses an `Args` struct from no arguments: its defaults (and environment).
fn defaults<T: clap::Args>() -> anyhow::Result<T> {
    #[derive(Parser)]
    struct W<T: clap::Args> {
        #[command(flatten)]
        inner: T,
    }
    Ok(W::<T>::try_parse_from(["xkube"])?.inner)
}

#[derive(clap::Args)]
struct ProxyArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(flatten)]
    proxy: xkube_proxy::agent::Options,
}

/// How a component reaches the apiserver.
#[derive(clap::Args)]
struct ClientArgs {
    /// kubeconfig file (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long, env = "XKUBE_KUBECONFIG")]
    kubeconfig: Option<std::path::PathBuf>,
}

impl ClientArgs {
    fn client(&self) -> anyhow::Result<xkube_client::Client> {
        let config = xkube_client::Config::load(
            self.kubeconfig.as_deref(),
            &xkube_client::Overrides::default(),
        )?;
        Ok(xkube_client::Client::new(&config)?)
    }
}

/// Kubeconfigs `xkube server` issues into its data dir for the components it runs, each with
/// the identity Kubernetes' bootstrap RBAC gives a role to.
const COMPONENT_KUBECONFIGS: &[(&str, &str)] = &[
    ("scheduler.kubeconfig", "system:kube-scheduler"),
    (
        "controller-manager.kubeconfig",
        "system:kube-controller-manager",
    ),
];

/// `xkube server`: the apiserver, then the controller-manager and the scheduler, which reach
/// it like any other client, each with a client certificate of its own identity
/// (`system:kube-controller-manager`, `system:kube-scheduler`) issued from the cluster CA.
async fn server(
    args: ServerArgs,
    token: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let data_dir = args.apiserver.data_dir.clone();
    let listen = xkube_apiserver::Listen::from_options(&args.apiserver);
    let api = xkube_apiserver::start(args.apiserver, listen, None, token.child_token()).await?;
    let kubeconfig = api.kubeconfig.clone().ok_or_else(|| {
        anyhow::anyhow!("xkube server needs the secure port (it writes the admin kubeconfig)")
    })?;
    let addr = api
        .secure_addr
        .ok_or_else(|| anyhow::anyhow!("xkube server needs the secure port"))?;
    let host = if addr.ip().is_unspecified() {
        std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
    } else {
        addr.ip()
    };
    let server_url = format!("https://{}", std::net::SocketAddr::new(host, addr.port()));
    {
        let dir = data_dir.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let pki = xkube_apiserver::pki::Pki::layout(&dir);
            for (file, user) in COMPONENT_KUBECONFIGS {
                pki.issue_kubeconfig(&dir.join(file), &server_url, user, &[])
                    .map_err(|e| anyhow::anyhow!("issuing {file}: {e}"))?;
            }
            Ok(())
        })
        .await??;
    }
    let cm_kubeconfig = data_dir.join("controller-manager.kubeconfig");
    let sched_kubeconfig = data_dir.join("scheduler.kubeconfig");
    let mut cm: xkube_controllers::Options = defaults()?;
    cm.connection.kubeconfig = Some(cm_kubeconfig);
    cm.cluster_cidr = args.cluster_cidr;
    // One service-account key for the token controller (signs) and the apiserver (verifies).
    cm.data_dir = data_dir.clone();
    cm.root_ca_file = Some(data_dir.join("pki/ca.crt"));
    cm.node_monitor_grace_period =
        xkube_api::duration::parse(&args.node_monitor_grace_period).map_err(anyhow::Error::msg)?;
    cm.pod_eviction_timeout =
        xkube_api::duration::parse(&args.pod_eviction_timeout).map_err(anyhow::Error::msg)?;
    let mut sched: xkube_scheduler::Options = defaults()?;
    sched.connection.kubeconfig = Some(sched_kubeconfig);
    let cm_client = cm.connection.client()?;
    let sched_client = sched.connection.client()?;
    let mut tasks = tokio::task::JoinSet::new();
    let t = token.clone();
    tasks.spawn(async move {
        xkube_controllers::run(cm, cm_client, t)
            .await
            .map_err(|e| anyhow::anyhow!("controller-manager: {e:#}"))
    });
    let t = token.clone();
    tasks.spawn(async move {
        xkube_scheduler::run(sched, sched_client, t)
            .await
            .map_err(|e| anyhow::anyhow!("scheduler: {e:#}"))
    });
    tracing::info!(kubeconfig = %kubeconfig.display(), "control plane running");
    // A control loop that ends on its own is a failure of the whole server.
    let result = supervise(tasks, &token, "control loop stopped").await;
    api.stop().await;
    result
}

/// `xkube agent`: the kubelet and the proxy of one node.
async fn agent(args: AgentArgs, token: tokio_util::sync::CancellationToken) -> anyhow::Result<()> {
    let node_name = match &args.kubelet.node_name {
        Some(n) => n.clone(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")?
            .trim()
            .to_owned(),
    };
    let proxy = xkube_proxy::agent::Options {
        node_name,
        proxy_mode: args.proxy_mode,
        cluster_cidr: args
            .kubelet
            .cluster_cidr
            .parse()
            .map_err(|e| anyhow::anyhow!("--cluster-cidr: {e}"))?,
        metrics_bind_address: args.proxy_metrics_bind_address,
        healthz_bind_address: args.proxy_healthz_bind_address,
        cleanup: args.disable_proxy,
        sync: args.proxy_sync,
        ebpf: xkube_proxy::mode::ebpf::EbpfOptions {
            uplink: args.uplink,
            xdp_mode: args.xdp_mode,
            cgroup: args.proxy_cgroup,
            ..Default::default()
        },
        iptables: args.proxy_iptables,
        userspace: args.proxy_userspace,
    };
    let client = ClientArgs {
        kubeconfig: args
            .proxy_kubeconfig
            .clone()
            .or_else(|| args.kubelet.kubeconfig.clone()),
    }
    .client()?;
    let mut tasks = tokio::task::JoinSet::new();
    if args.disable_proxy {
        // With `cleanup` set, the proxy removes every mode's state and returns.
        xkube_proxy::agent::run(proxy, client, token.clone())
            .await
            .map_err(|e| anyhow::anyhow!("removing the proxy's state: {e:#}"))?;
    } else {
        let t = token.clone();
        tasks.spawn(async move {
            xkube_proxy::agent::run(proxy, client, t)
                .await
                .map_err(|e| anyhow::anyhow!("proxy: {e:#}"))
        });
    }
    let t = token.clone();
    let kubelet = args.kubelet;
    tasks.spawn(async move {
        xkube_kubelet::run(kubelet, t)
            .await
            .map_err(|e| anyhow::anyhow!("kubelet: {e:#}"))
    });
    supervise(tasks, &token, "agent component stopped").await
}

/// Waits for the first of `tasks` to end (or for `token`), then cancels `token` and drains the
/// rest, logging their errors as `stopped`. Returns the first task's result (`Ok` when the
/// token ended the wait).
async fn supervise(
    mut tasks: tokio::task::JoinSet<anyhow::Result<()>>,
    token: &tokio_util::sync::CancellationToken,
    stopped: &'static str,
) -> anyhow::Result<()> {
    let mut result = Ok(());
    tokio::select! {
        _ = token.cancelled() => {}
        Some(r) = tasks.join_next() => {
            result = r.map_err(anyhow::Error::from).and_then(|r| r);
            token.cancel();
        }
    }
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r.map_err(anyhow::Error::from).and_then(|r| r) {
            tracing::warn!(error = %e, "{stopped}");
        }
    }
    result
}

/// Runs an async component on a multi-threaded runtime with the signal-driven shutdown token.
/// Ends the process with the command's exit code (`cluster exec`, `cluster shell`).
fn exit_with(r: xkube_cluster::Result<i32>) -> anyhow::Result<()> {
    let code = r?;
    std::process::exit(code)
}

fn run_async<F, Fut>(f: F) -> anyhow::Result<()>
where
    F: FnOnce(tokio_util::sync::CancellationToken) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let token = signals::shutdown_token()?;
        f(token).await
    })
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    let result = match cli.cmd {
        Cmd::Version => {
            println!(
                "xkube {} ({}/{}), Kubernetes API {KUBERNETES_API}",
                env!("CARGO_PKG_VERSION"),
                std::env::consts::OS,
                std::env::consts::ARCH
            );
            Ok(())
        }
        Cmd::Demo { demo } => demo.run(),
        Cmd::Apiserver(opts) => run_async(|token| async move {
            xkube_apiserver::run(*opts, token)
                .await
                .map_err(anyhow::Error::from)
        }),
        Cmd::Server(args) => run_async(|token| server(*args, token)),
        Cmd::ControllerManager(opts) => run_async(|token| async move {
            let client = opts.connection.client()?;
            xkube_controllers::run(*opts, client, token).await?;
            Ok(())
        }),
        Cmd::Scheduler(opts) => run_async(|token| async move {
            let client = opts.connection.client()?;
            xkube_scheduler::run(*opts, client, token).await?;
            Ok(())
        }),
        Cmd::Kubelet(opts) => run_async(|token| async move {
            xkube_kubelet::run(*opts, token).await?;
            Ok(())
        }),
        Cmd::Dns(opts) => run_async(|token| async move {
            xkube_dns::run(*opts, token).await?;
            Ok(())
        }),
        Cmd::Agent(args) => run_async(|token| agent(*args, token)),
        Cmd::Cluster { cmd } => match cmd {
            ClusterCmd::Up(o) => run_async(|_| async move {
                xkube_cluster::up(&o).await?;
                Ok(())
            }),
            ClusterCmd::Down(o) => xkube_cluster::down(&o)
                .map(|()| println!("cluster {:?} removed", o.name))
                .map_err(anyhow::Error::from),
            ClusterCmd::Status(o) => xkube_cluster::status(&o)
                .map(|s| print!("{s}"))
                .map_err(anyhow::Error::from),
            ClusterCmd::Restart {
                cluster,
                role,
                kill,
                proxy_mode,
            } => xkube_cluster::restart(&cluster, &role, kill, proxy_mode)
                .map(|pid| println!("{role} restarted (pid {pid})"))
                .map_err(anyhow::Error::from),
            ClusterCmd::LoadImage {
                cluster,
                images,
                docker_host,
            } => run_async(|_| async move {
                xkube_cluster::load_image(&cluster, &images, &docker_host).await?;
                Ok(())
            }),
            ClusterCmd::Exec {
                cluster,
                node,
                command,
            } => exit_with(xkube_cluster::exec::exec(&cluster, &node, &command)),
            ClusterCmd::Shell { cluster, node } => {
                exit_with(xkube_cluster::exec::shell(&cluster, &node))
            }
        },
        Cmd::Proxy(args) => run_async(|token| async move {
            let client = args.client.client()?;
            xkube_proxy::agent::run(args.proxy, client, token)
                .await
                .map_err(anyhow::Error::from)
        }),
        Cmd::Agnhost(args) => run_async(|token| agnhost::run(args, token)),
        Cmd::Bench(opts) => {
            let out = opts.out.clone();
            xkube_bench::run(*opts).map(|r| {
                println!(
                    "{} cells measured; results in {}/ (results.json, report.md, *.svg)",
                    r.cells.len(),
                    out.display()
                );
            })
        }
        Cmd::Pause => pause::run(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xkube: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
