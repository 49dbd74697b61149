//! Command-line options, with Kubernetes' flag names and defaults.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, ValueEnum};

/// Which store backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StorageBackend {
    /// The embedded, crash-safe single-file store in `--data-dir` (default).
    Embedded,
    /// etcd at `--etcd-servers`.
    #[value(alias = "etcd3")]
    Etcd,
    /// In memory, lost on exit (tests).
    Memory,
}

/// Authorization modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthorizationMode {
    /// Everything is allowed.
    #[value(name = "AlwaysAllow")]
    AlwaysAllow,
    /// Everything is denied.
    #[value(name = "AlwaysDeny")]
    AlwaysDeny,
    /// Attribute-based policy from `--authorization-policy-file`.
    #[value(name = "ABAC")]
    Abac,
    /// Kubelets (`system:node:<name>` in `system:nodes`) may read the objects of the pods
    /// bound to them and write only their own Node and pods.
    #[value(name = "Node")]
    Node,
    /// Role-based access control (`rbac.authorization.k8s.io/v1`).
    #[value(name = "RBAC")]
    Rbac,
}

/// `xkube apiserver` flags.
#[derive(Debug, Clone, Args)]
pub struct Options {
    /// Directory of the embedded store, the generated PKI and the admin kubeconfig.
    #[arg(
        long,
        env = "XKUBE_DATA_DIR",
        default_value = "/var/lib/xkube/apiserver"
    )]
    pub data_dir: PathBuf,

    /// Comma-separated etcd endpoints; selects the etcd backend unless --storage-backend says
    /// otherwise.
    #[arg(long, env = "XKUBE_ETCD_SERVERS", value_delimiter = ',')]
    pub etcd_servers: Vec<String>,

    /// Key prefix in etcd.
    #[arg(long, default_value = "")]
    pub etcd_prefix: String,

    /// Store backend: embedded (default), etcd (etcd3), memory.
    #[arg(long, env = "XKUBE_STORAGE_BACKEND", value_enum)]
    pub storage_backend: Option<StorageBackend>,

    /// HTTPS port (0 picks a free port).
    #[arg(long, env = "XKUBE_SECURE_PORT", default_value_t = xkube_api::cluster::APISERVER_PORT)]
    pub secure_port: u16,

    /// Address of the secure port.
    #[arg(long, env = "XKUBE_BIND_ADDRESS", default_value = "0.0.0.0")]
    pub bind_address: IpAddr,

    /// Plain HTTP port without authentication, bound to 127.0.0.1 only; 0 disables it.
    #[arg(long, env = "XKUBE_INSECURE_PORT", default_value_t = 0)]
    pub insecure_port: u16,

    /// Address published in the `kubernetes` Endpoints (default: the bind address, or
    /// 127.0.0.1 when that is unspecified).
    #[arg(long, env = "XKUBE_ADVERTISE_ADDRESS")]
    pub advertise_address: Option<IpAddr>,

    /// CIDR of Service cluster IPs.
    #[arg(
        long,
        env = "XKUBE_SERVICE_CLUSTER_IP_RANGE",
        default_value = xkube_api::cluster::SERVICE_CIDR
    )]
    pub service_cluster_ip_range: String,

    /// Range of NodePorts, `first-last` inclusive.
    #[arg(
        long,
        env = "XKUBE_SERVICE_NODE_PORT_RANGE",
        default_value = xkube_api::cluster::NODE_PORT_RANGE
    )]
    pub service_node_port_range: String,

    /// CSV file of bearer tokens: `token,user,uid,"group1,group2"`.
    #[arg(long, env = "XKUBE_TOKEN_AUTH_FILE")]
    pub token_auth_file: Option<PathBuf>,

    /// CSV file of basic-auth users: `password,user,uid[,"groups"]`.
    #[arg(long, env = "XKUBE_BASIC_AUTH_FILE")]
    pub basic_auth_file: Option<PathBuf>,

    /// PEM bundle of CAs whose client certificates authenticate users (CN = user,
    /// O = groups); the generated cluster CA is always trusted too.
    #[arg(long, env = "XKUBE_CLIENT_CA_FILE")]
    pub client_ca_file: Option<PathBuf>,

    /// Serve requests without credentials as `system:anonymous` (off by default: such
    /// requests get 401).
    #[arg(
        long,
        env = "XKUBE_ANONYMOUS_AUTH",
        default_value_t = false,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub anonymous_auth: bool,

    /// Ordered authorization modes (AlwaysAllow, AlwaysDeny, ABAC, Node, RBAC); the first
    /// that allows or denies decides. `system:masters` is always allowed.
    #[arg(
        long,
        env = "XKUBE_AUTHORIZATION_MODE",
        value_enum,
        value_delimiter = ',',
        default_value = "Node,RBAC"
    )]
    pub authorization_mode: Vec<AuthorizationMode>,

    /// ABAC policy file (one JSON policy per line).
    #[arg(long, env = "XKUBE_AUTHORIZATION_POLICY_FILE")]
    pub authorization_policy_file: Option<PathBuf>,

    /// Key verifying service-account tokens: PKCS#8 DER P-256 (the controller-manager's
    /// `--service-account-private-key-file`), or PEM private/public keys. Default
    /// `<data-dir>/service-account-key.pk8`, created when missing.
    #[arg(long, env = "XKUBE_SERVICE_ACCOUNT_KEY_FILE")]
    pub service_account_key_file: Option<PathBuf>,

    /// Check that a service-account token's Secret and ServiceAccount still exist.
    #[arg(
        long,
        default_value_t = true,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub service_account_lookup: bool,

    /// Ordered admission plugins: AlwaysAdmit, AlwaysDeny, NamespaceLifecycle,
    /// NamespaceExists, SecurityContextDeny, ServiceAccount, LimitRanger, ResourceQuota
    /// (Kubernetes' recommended order:
    /// NamespaceLifecycle,NamespaceExists,ServiceAccount,LimitRanger,ResourceQuota).
    /// ServiceAccount is not in the default: it needs the controller-manager's serviceaccount
    /// and token controllers, without which every pod creation is refused.
    #[arg(
        long,
        env = "XKUBE_ADMISSION_CONTROL",
        value_delimiter = ',',
        default_value = "NamespaceLifecycle,LimitRanger,ResourceQuota"
    )]
    pub admission_control: Vec<String>,

    /// How long events are kept (`1h0m0s`, `30m`, `90s`).
    #[arg(long, env = "XKUBE_EVENT_TTL", default_value = "1h0m0s", value_parser = xkube_api::duration::parse)]
    pub event_ttl: std::time::Duration,

    /// Events kept per resource in the watch cache (older resourceVersions get 410).
    #[arg(long, default_value_t = 1000)]
    pub watch_cache_size: usize,

    /// Seconds between watch bookmarks (for clients that allow them).
    #[arg(long, default_value_t = 30)]
    pub bookmark_interval_seconds: u64,

    /// Keep this many seconds of store history; older revisions are compacted (0 = never).
    #[arg(long, default_value_t = 300)]
    pub compaction_interval_seconds: u64,

    // How the apiserver reaches kubelets (logs, exec): HTTPS only, with its own client
    // certificate, verifying the kubelets' serving certificates.
    /// Client certificate presented to kubelets (default:
    /// `<data-dir>/pki/apiserver-kubelet-client.crt`, generated with CN
    /// `kube-apiserver-kubelet-client`).
    #[arg(
        long,
        env = "XKUBE_KUBELET_CLIENT_CERTIFICATE",
        requires = "kubelet_client_key"
    )]
    pub kubelet_client_certificate: Option<PathBuf>,

    /// Key of `--kubelet-client-certificate` (default:
    /// `<data-dir>/pki/apiserver-kubelet-client.key`).
    #[arg(
        long,
        env = "XKUBE_KUBELET_CLIENT_KEY",
        requires = "kubelet_client_certificate"
    )]
    pub kubelet_client_key: Option<PathBuf>,

    /// PEM bundle of CAs verifying kubelets' serving certificates (default: the cluster CA,
    /// `<data-dir>/pki/ca.crt`).
    #[arg(long, env = "XKUBE_KUBELET_CERTIFICATE_AUTHORITY")]
    pub kubelet_certificate_authority: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            data_dir: PathBuf::from("/var/lib/xkube/apiserver"),
            etcd_servers: Vec::new(),
            etcd_prefix: String::new(),
            storage_backend: None,
            secure_port: xkube_api::cluster::APISERVER_PORT,
            bind_address: IpAddr::from([0, 0, 0, 0]),
            insecure_port: 0,
            advertise_address: None,
            service_cluster_ip_range: xkube_api::cluster::SERVICE_CIDR.into(),
            service_node_port_range: xkube_api::cluster::NODE_PORT_RANGE.into(),
            token_auth_file: None,
            basic_auth_file: None,
            client_ca_file: None,
            anonymous_auth: false,
            authorization_mode: vec![AuthorizationMode::Node, AuthorizationMode::Rbac],
            authorization_policy_file: None,
            service_account_key_file: None,
            service_account_lookup: true,
            admission_control: vec![
                "NamespaceLifecycle".into(),
                "LimitRanger".into(),
                "ResourceQuota".into(),
            ],
            event_ttl: std::time::Duration::from_secs(3600),
            watch_cache_size: 1000,
            bookmark_interval_seconds: 30,
            compaction_interval_seconds: 300,
            kubelet_client_certificate: None,
            kubelet_client_key: None,
            kubelet_certificate_authority: None,
        }
    }
}

impl Options {
    /// The service-account key file: the flag, else `<data-dir>/service-account-key.pk8`.
    pub fn service_account_key_path(&self) -> PathBuf {
        self.service_account_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join(crate::satoken::KEY_FILE))
    }

    /// The backend the flags select.
    pub fn backend(&self) -> StorageBackend {
        match self.storage_backend {
            Some(b) => b,
            None if !self.etcd_servers.is_empty() => StorageBackend::Etcd,
            None => StorageBackend::Embedded,
        }
    }
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
    fn defaults_match_kubernetes() {
        let cli = Cli::try_parse_from(["x"]).expect("parses");
        assert_eq!(cli.opts.secure_port, 6443);
        assert_eq!(cli.opts.service_cluster_ip_range, "10.96.0.0/12");
        assert_eq!(cli.opts.service_node_port_range, "30000-32767");
        assert_eq!(cli.opts.insecure_port, 0);
        assert_eq!(cli.opts.backend(), StorageBackend::Embedded);
        assert_eq!(
            cli.opts.admission_control,
            Options::default().admission_control,
            "flag and library defaults agree"
        );
        assert_eq!(
            cli.opts.authorization_mode,
            Options::default().authorization_mode
        );
        assert!(cli.opts.service_account_lookup);
        assert_eq!(
            cli.opts.service_account_key_path(),
            std::path::Path::new("/var/lib/xkube/apiserver/service-account-key.pk8")
        );
        let cli = Cli::try_parse_from([
            "x",
            "--etcd-servers=http://127.0.0.1:2379",
            "--authorization-mode=ABAC,RBAC",
            "--admission-control=NamespaceExists,AlwaysDeny",
        ])
        .expect("parses");
        assert_eq!(cli.opts.backend(), StorageBackend::Etcd);
        assert_eq!(
            cli.opts.authorization_mode,
            vec![AuthorizationMode::Abac, AuthorizationMode::Rbac]
        );
        assert_eq!(
            cli.opts.admission_control,
            vec!["NamespaceExists", "AlwaysDeny"]
        );
    }
}
