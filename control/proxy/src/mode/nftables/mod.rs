//! The nftables mode: Kubernetes 1.33 kube-proxy's nftables proxier (KEP-3866).
//!
//! Every sync is one `nft -f -` transaction ([`rules::full`], [`rules::partial`]): a partial
//! sync (on changes) rewrites the changed services' chains and map elements only, so its cost
//! follows the change, not the number of services; a full sync (the first, hourly, after a
//! failure, and when the table disappeared) recreates the table atomically. UDP flows
//! translated to endpoints that no longer serve their service are deleted from conntrack, as
//! in the iptables mode. The table stays when the agent stops (a restart drops no traffic);
//! `--cleanup` and starting another mode delete it ([`cleanup`]).

pub mod rules;

use std::{
    collections::BTreeMap,
    io::Write as _,
    process::{Command, Stdio},
    sync::Arc,
};

use tracing::{debug, info, warn};

use self::rules::{Change, RenderContext, ServiceNft, TABLE, render_service};
use super::{
    ChangedServices, CleanupContext, MetricsCell, ModeMetrics, Models, NodeInfo, Proxier,
    ProxyMode, SyncStats, Timing,
};
use crate::{Error, Result, conntrack, model::ServiceName};

const NFT: &str = "nft";

fn nft_err(what: &str, out: &std::process::Output) -> Error {
    Error::Nftables {
        what: what.to_owned(),
        status: out.status.code(),
        stderr: String::from_utf8_lossy(&out.stderr)
            .lines()
            .take(20)
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

fn spawn_err(e: std::io::Error) -> Error {
    Error::Io {
        op: "running",
        path: NFT.into(),
        source: e,
    }
}

/// Runs `nft -f -` with `script` on stdin: one transaction, all or nothing.
pub fn apply(script: &str) -> Result<()> {
    if script.is_empty() {
        return Ok(());
    }
    let mut child = Command::new(NFT)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).map_err(spawn_err)?;
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if !out.status.success() {
        return Err(nft_err("nft -f (transaction)", &out));
    }
    Ok(())
}

/// Whether `nft` is installed.
pub fn available() -> bool {
    Command::new(NFT)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether the table `ip kube-proxy` exists (`nft list tables`: names only).
pub fn table_exists() -> Result<bool> {
    let out = Command::new(NFT)
        .args(["list", "tables", "ip"])
        .output()
        .map_err(spawn_err)?;
    if !out.status.success() {
        return Err(nft_err("nft list tables", &out));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == format!("table ip {TABLE}")))
}

/// Deletes the table `ip kube-proxy` (and with it every chain, set and map of this mode).
/// Idempotent; nothing to do without `nft` (this mode cannot have written anything).
pub fn cleanup(_ctx: &CleanupContext) -> Result<()> {
    if !available() {
        return Ok(());
    }
    apply(&format!("add table ip {TABLE}\ndelete table ip {TABLE}\n"))
}

#[derive(Default)]
struct MetricsState {
    sync_failures: u64,
    table_resyncs: u64,
    conntrack_deleted: u64,
    last_commands: usize,
    chains: usize,
    elements: usize,
}

/// kube-proxy's nftables metrics (and the conntrack reconciler's).
type NftablesMetrics = MetricsCell<MetricsState>;

impl ModeMetrics for NftablesMetrics {
    fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let Some(s) = self.get() else {
            return;
        };
        let fam = "ip_family=\"IPv4\"";
        let _ = writeln!(
            out,
            "# HELP kubeproxy_sync_proxy_rules_nftables_sync_failures_total Cumulative proxy nftables sync failures\n\
             # TYPE kubeproxy_sync_proxy_rules_nftables_sync_failures_total counter\n\
             kubeproxy_sync_proxy_rules_nftables_sync_failures_total{{{fam}}} {}\n\
             # HELP kubeproxy_conntrack_reconciler_deleted_entries_total Cumulative conntrack flows deleted by the conntrack reconciler\n\
             # TYPE kubeproxy_conntrack_reconciler_deleted_entries_total counter\n\
             kubeproxy_conntrack_reconciler_deleted_entries_total{{{fam}}} {}\n\
             # HELP xkube_proxy_nftables_last_transaction_commands Commands in the last nft transaction.\n\
             # TYPE xkube_proxy_nftables_last_transaction_commands gauge\n\
             xkube_proxy_nftables_last_transaction_commands {}\n\
             # HELP xkube_proxy_nftables_service_chains Per-service chains in the table.\n\
             # TYPE xkube_proxy_nftables_service_chains gauge\n\
             xkube_proxy_nftables_service_chains {}\n\
             # HELP xkube_proxy_nftables_map_elements Elements the services put into the shared sets and maps.\n\
             # TYPE xkube_proxy_nftables_map_elements gauge\n\
             xkube_proxy_nftables_map_elements {}\n\
             # HELP xkube_proxy_nftables_table_resyncs_total Full syncs forced because the table disappeared.\n\
             # TYPE xkube_proxy_nftables_table_resyncs_total counter\n\
             xkube_proxy_nftables_table_resyncs_total {}",
            s.sync_failures,
            s.conntrack_deleted,
            s.last_commands,
            s.chains,
            s.elements,
            s.table_resyncs,
        );
    }
}

/// The nftables mode (module docs).
pub struct NftablesProxier {
    ctx: RenderContext,
    /// What the kernel holds, per service.
    rendered: BTreeMap<ServiceName, ServiceNft>,
    metrics: Arc<NftablesMetrics>,
}

impl std::fmt::Debug for NftablesProxier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NftablesProxier")
            .field("services", &self.rendered.len())
            .finish_non_exhaustive()
    }
}

fn render_context(node: &NodeInfo, masquerade_all: bool) -> RenderContext {
    RenderContext {
        node_name: node.name.clone(),
        node_ips: node.addrs.clone(),
        pod_cidr: node.pod_cidr,
        cluster_cidr: node.cluster_cidr,
        masquerade_all,
    }
}

impl NftablesProxier {
    /// The mode for `node` (`masquerade_all`: `--masquerade-all`); nothing is written
    /// before the first (full) sync.
    pub fn new(masquerade_all: bool, node: &NodeInfo) -> Result<Self> {
        if !available() {
            return Err(Error::Flag {
                flag: "proxy-mode",
                reason: "the nftables mode needs the `nft` tool (Debian package nftables)".into(),
            });
        }
        info!("nftables mode");
        Ok(Self {
            ctx: render_context(node, masquerade_all),
            rendered: BTreeMap::new(),
            metrics: Arc::new(NftablesMetrics::default()),
        })
    }

    /// Applies `tx`, counting a failure.
    fn apply(&self, tx: &str) -> Result<()> {
        apply(tx).inspect_err(|_| self.metrics.update(|s| s.sync_failures += 1))
    }

    /// Publishes the gauges after `tx` was applied and `rendered` updated.
    fn publish(&self, tx: &str) {
        let (chains, elements) = self.rendered.values().fold((0, 0), |(c, e), s| {
            (c + s.chains.len(), e + s.elements.len())
        });
        let n = rules::commands(tx);
        self.metrics.update(|s| {
            s.last_commands = n;
            s.chains = chains;
            s.elements = elements;
        });
    }

    /// Recreates the table from the rendered services; the commands written.
    fn write_all(&self) -> Result<usize> {
        let tx = rules::full(&self.rendered, &self.ctx);
        self.apply(&tx)?;
        self.publish(&tx);
        debug!(services = self.rendered.len(), "full nftables sync");
        Ok(rules::commands(&tx))
    }

    fn reconcile_conntrack<'a>(&self, services: impl Iterator<Item = &'a ServiceNft>) {
        let udp: Vec<&conntrack::UdpService> = services.flat_map(|s| s.udp.iter()).collect();
        let n = conntrack::reconcile(&udp);
        if n > 0 {
            self.metrics.update(|s| s.conntrack_deleted += n);
        }
    }
}

impl Proxier for NftablesProxier {
    fn mode(&self) -> ProxyMode {
        ProxyMode::Nftables
    }

    fn set_node(&mut self, node: &NodeInfo) {
        // Rendered again by the full sync that follows a node change.
        self.ctx = render_context(node, self.ctx.masquerade_all);
    }

    fn sync_changed(&mut self, changed: &ChangedServices) -> Result<SyncStats> {
        let mut next: Vec<(ServiceName, Option<ServiceNft>)> = Vec::with_capacity(changed.len());
        for (name, model) in changed {
            next.push((
                name.clone(),
                model.as_ref().map(|m| render_service(m, &self.ctx)),
            ));
        }
        let changes: Vec<Change<'_>> = next
            .iter()
            .map(|(name, new)| Change {
                old: self.rendered.get(name),
                new: new.as_ref(),
            })
            .collect();
        let tx = rules::partial(&changes);
        drop(changes);
        self.apply(&tx)?;
        for (name, new) in next {
            match new {
                Some(r) => self.rendered.insert(name, r),
                None => self.rendered.remove(&name),
            };
        }
        self.publish(&tx);
        let n = rules::commands(&tx);
        self.reconcile_conntrack(
            changed
                .iter()
                .filter_map(|(name, _)| self.rendered.get(name)),
        );
        Ok(SyncStats {
            writes: n,
            services: changed.len(),
        })
    }

    fn sync_full(&mut self, all: &Models) -> Result<SyncStats> {
        self.rendered = all
            .iter()
            .map(|(n, m)| (n.clone(), render_service(m, &self.ctx)))
            .collect();
        let n = self.write_all()?;
        self.reconcile_conntrack(self.rendered.values());
        Ok(SyncStats {
            writes: n,
            services: all.len(),
        })
    }

    fn housekeeping(&mut self) -> Result<()> {
        if !table_exists()? {
            warn!("the nftables table ip kube-proxy disappeared; full sync");
            self.metrics.update(|s| s.table_resyncs += 1);
            self.write_all()?;
        }
        Ok(())
    }

    fn timing(&self) -> Timing {
        Timing::KUBE_PROXY
    }

    fn metrics(&self) -> Arc<dyn ModeMetrics> {
        self.metrics.clone()
    }
}
