//! `xkubectl`: a kubectl-compatible command line for xkube.

mod apply;
mod cmds;
mod describe;
mod generate;
mod get;
mod jsonpath;
mod logs;
mod manifest;
mod output;
mod proxy;
mod rolling;
mod rollout;
mod stream;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use xkube_client::{Client, Config, Overrides};

/// Global flags, as kubectl's.
#[derive(Debug, Clone, Args)]
pub struct Global {
    /// Path to the kubeconfig file to use.
    #[arg(long, global = true, env = "XKUBE_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// The kubeconfig cluster to use.
    #[arg(long, global = true)]
    pub cluster: Option<String>,
    /// The kubeconfig user to use.
    #[arg(long, global = true)]
    pub user: Option<String>,
    /// The namespace scope for this request.
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    /// The address and port of the Kubernetes API server.
    #[arg(short = 's', long, global = true)]
    pub server: Option<String>,
    /// Bearer token for authentication to the API server.
    #[arg(long, global = true)]
    pub token: Option<String>,
    /// Path to a cert file for the certificate authority.
    #[arg(long, global = true)]
    pub certificate_authority: Option<String>,
    /// Do not check the server's certificate.
    #[arg(long, global = true)]
    pub insecure_skip_tls_verify: bool,
    /// Log level verbosity (0-9, as kubectl's -v).
    #[arg(short = 'v', long = "v", global = true, default_value_t = 0)]
    pub verbosity: u8,
}

impl Global {
    /// The resolved connection config.
    pub fn config(&self) -> anyhow::Result<Config> {
        let o = Overrides {
            context: self.context.clone(),
            cluster: self.cluster.clone(),
            user: self.user.clone(),
            namespace: self.namespace.clone(),
            server: self.server.clone(),
            token: self.token.clone(),
            insecure_skip_tls_verify: self.insecure_skip_tls_verify,
            certificate_authority: self.certificate_authority.clone(),
        };
        Ok(Config::load(self.kubeconfig.as_deref(), &o)?)
    }

    /// A client and the namespace to use.
    pub fn client(&self) -> anyhow::Result<(Client, String)> {
        let cfg = self.config()?;
        let ns = cfg.namespace.clone();
        Ok((Client::new(&cfg)?, ns))
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "xkubectl",
    version,
    about = "xkubectl controls the xkube cluster manager"
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Create resources from files or stdin.
    Create(cmds::CreateArgs),
    /// Apply a configuration to resources by file name or stdin.
    Apply(apply::ApplyArgs),
    /// Display one or many resources.
    Get(get::GetArgs),
    /// Show details of a specific resource or group of resources.
    Describe(describe::DescribeArgs),
    /// Print the logs for a container in a pod.
    Logs(logs::LogsArgs),
    /// Execute a command in a container.
    Exec(stream::ExecArgs),
    /// Attach to a running container.
    Attach(stream::AttachArgs),
    /// Forward one or more local ports to a pod.
    PortForward(stream::PortForwardArgs),
    /// Copy files and directories to and from containers.
    Cp(stream::CpArgs),
    /// Delete resources by file names, stdin, resources and names, or by label selector.
    Delete(cmds::DeleteArgs),
    /// Set a new size for a replication controller.
    Scale(cmds::ScaleArgs),
    /// Update the labels on a resource.
    Label(cmds::MetaArgs),
    /// Update the annotations on a resource.
    Annotate(cmds::MetaArgs),
    /// Expose a replication controller, service or pod as a new Kubernetes service.
    Expose(cmds::ExposeArgs),
    /// Run a particular image on the cluster.
    Run(cmds::RunArgs),
    /// Perform a rolling update of the given replication controller.
    RollingUpdate(rolling::RollingArgs),
    /// Manage the rollout of a deployment.
    Rollout {
        #[command(subcommand)]
        cmd: rollout::RolloutCmd,
    },
    /// Set specific features on objects.
    Set {
        #[command(subcommand)]
        cmd: SetCmd,
    },
    /// Run a proxy to the Kubernetes API server.
    Proxy(proxy::ProxyArgs),
    /// Display cluster information.
    ClusterInfo,
    /// Print the supported API versions on the server, in the form of "group/version".
    ApiVersions,
    /// Print the client and server version information.
    Version(cmds::VersionArgs),
    /// Modify kubeconfig files.
    Config {
        #[command(subcommand)]
        cmd: cmds::ConfigCmd,
    },
}

/// `set` subcommands.
#[derive(Debug, Subcommand)]
enum SetCmd {
    /// Update the images of a pod template (or a pod).
    Image(rollout::SetImageArgs),
}

/// An error already formatted the way kubectl prints it.
#[derive(Debug)]
pub struct Reported(pub String);

impl std::fmt::Display for Reported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Reported {}

/// Formats a client error like kubectl (`Error from server (NotFound): ...`).
pub fn describe_error(e: &xkube_client::Error, server: &str) -> String {
    match e {
        xkube_client::Error::Api(s) => format!("Error from server ({}): {}", s.reason, s.message),
        xkube_client::Error::Http(h) if h.is_connect() => {
            let host = server
                .split("://")
                .nth(1)
                .unwrap_or(server)
                .trim_end_matches('/');
            format!(
                "The connection to the server {host} was refused - did you specify the right host or port?"
            )
        }
        other => format!("error: {other}"),
    }
}

/// Converts a client error into a reported one.
pub fn api_err(e: xkube_client::Error, client: &Client) -> anyhow::Error {
    Reported(describe_error(&e, client.base_url())).into()
}

fn init_tracing(v: u8) {
    let level = match v {
        0 => "warn",
        1..=3 => "info",
        4..=5 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!(
            "xkube={level},xkubectl={level},xkube_client={level},xkube_cli={level}"
        ))
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.global.verbosity);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(run(cli));
    // A read of the terminal (exec -i, attach -i) may still block a thread: do not wait for it.
    rt.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(stream::ExitWith(code)) = e.downcast_ref::<stream::ExitWith>() {
                return ExitCode::from(u8::try_from(*code).unwrap_or(1));
            }
            if let Some(r) = e.downcast_ref::<Reported>() {
                if !r.0.is_empty() {
                    eprintln!("{r}");
                }
            } else if let Some(ce) = e.downcast_ref::<xkube_client::Error>() {
                eprintln!("{}", describe_error(ce, ""));
            } else {
                eprintln!("error: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let g = &cli.global;
    match cli.cmd {
        Cmd::Create(a) => cmds::create(g, a).await,
        Cmd::Apply(a) => apply::run(g, a).await,
        Cmd::Get(a) => get::run(g, a).await,
        Cmd::Describe(a) => describe::run(g, a).await,
        Cmd::Delete(a) => cmds::delete(g, a).await,
        Cmd::Logs(a) => logs::run(g, a).await,
        Cmd::Exec(a) => stream::exec(g, a).await,
        Cmd::Attach(a) => stream::attach(g, a).await,
        Cmd::PortForward(a) => stream::port_forward(g, a).await,
        Cmd::Cp(a) => stream::cp(g, a).await,
        Cmd::Scale(a) => cmds::scale(g, a).await,
        Cmd::Rollout { cmd } => rollout::run(g, cmd).await,
        Cmd::Set {
            cmd: SetCmd::Image(a),
        } => rollout::set_image(g, a).await,
        Cmd::Label(a) => cmds::label(g, a, "labels").await,
        Cmd::Annotate(a) => cmds::label(g, a, "annotations").await,
        Cmd::Expose(a) => cmds::expose(g, a).await,
        Cmd::Run(a) => cmds::run_cmd(g, a).await,
        Cmd::RollingUpdate(a) => rolling::run(g, a).await,
        Cmd::Proxy(a) => proxy::run(g, a).await,
        Cmd::ClusterInfo => cmds::cluster_info(g).await,
        Cmd::ApiVersions => cmds::api_versions(g).await,
        Cmd::Version(a) => cmds::version(g, a).await,
        Cmd::Config { cmd } => cmds::config(g, cmd),
    }
}
