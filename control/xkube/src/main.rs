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
    Server(Box<xkube_apiserver::Options>),
    /// A local multi-node cluster in network namespaces.
    Cluster {
        #[command(subcommand)]
        cmd: ClusterCmd,
    },
    /// The service proxy (eBPF dataplane).
    Proxy(Box<ProxyArgs>),
    /// Test workload modelled on Kubernetes' agnhost netexec: HTTP, TCP and UDP echo.
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
    },
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

/// `xkube server`: the apiserver, then the control loops against it through the API.
async fn server(
    opts: xkube_apiserver::Options,
    token: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    xkube_apiserver::run(opts, token).await?;
    Ok(())
}

/// Runs an async component on a multi-threaded runtime with the signal-driven shutdown token.
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
        Cmd::Server(opts) => run_async(|token| server(*opts, token)),
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
            } => xkube_cluster::restart(&cluster, &role, kill)
                .map(|pid| println!("{role} restarted (pid {pid})"))
                .map_err(anyhow::Error::from),
        },
        Cmd::Proxy(args) => run_async(|token| async move {
            let client = args.client.client()?;
            xkube_proxy::agent::run(args.proxy, client, token)
                .await
                .map_err(anyhow::Error::from)
        }),
        Cmd::Agnhost(args) => run_async(|token| agnhost::run(args, token)),
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
