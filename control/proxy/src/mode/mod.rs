//! The seam between the agent and the proxy modes.
//!
//! The agent (reflectors, the [`ChangeTracker`](crate::model::ChangeTracker), the sync loop
//! with `--min-sync-period` / `--sync-period`, health and the kube-proxy metrics) knows only
//! [`Proxier`]: apply the changed services, make everything exactly right (a full sync, which
//! re-reads what the kernel holds and repairs drift), housekeeping, metrics. Each mode owns its
//! state (eBPF maps and ids, iptables chains, listeners) and its flags.
//!
//! Cleanup is per mode and works without starting it ([`cleanup`]): `--cleanup` removes every
//! mode's state, and a proxy started in mode X removes the state of every other mode
//! ([`cleanup_other_modes`]) once its own first sync succeeded (kube-proxy removes it before
//! starting; removing it after keeps a node that switches modes serving throughout).

pub mod categorize;
pub mod ebpf;
pub mod iptables;
pub mod nftables;
pub mod userspace;

use std::{collections::BTreeMap, net::Ipv4Addr, path::PathBuf, sync::Arc, time::Duration};

use crate::{
    Result,
    model::{Ipv4Cidr, ServiceModel, ServiceName},
};

/// How services are implemented on this node (`--proxy-mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ProxyMode {
    /// eBPF: socket LB, tc and XDP programs (the default).
    Ebpf,
    /// kube-proxy's iptables mode (nat DNAT chains, one iptables-restore per sync).
    Iptables,
    /// kube-proxy's nftables mode (table `ip kube-proxy`, verdict-map dispatch, one `nft -f`
    /// transaction per sync).
    Nftables,
    /// kube-proxy's userspace mode (a listening socket per service port, a second connection
    /// to the backend; iptables redirects to the socket).
    Userspace,
}

impl ProxyMode {
    /// Every mode, for cleanup.
    pub const ALL: [ProxyMode; 4] = [
        ProxyMode::Ebpf,
        ProxyMode::Iptables,
        ProxyMode::Nftables,
        ProxyMode::Userspace,
    ];

    pub fn name(&self) -> &'static str {
        match self {
            ProxyMode::Ebpf => "ebpf",
            ProxyMode::Iptables => "iptables",
            ProxyMode::Nftables => "nftables",
            ProxyMode::Userspace => "userspace",
        }
    }
}

/// What a mode needs to know about the node it runs on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    /// InternalIP and ExternalIP addresses; the first is the primary one.
    pub addrs: Vec<Ipv4Addr>,
    /// `spec.podCIDR`.
    pub pod_cidr: Option<Ipv4Cidr>,
    /// `--cluster-cidr`.
    pub cluster_cidr: Ipv4Cidr,
}

/// Every service's model, by name.
pub type Models = BTreeMap<ServiceName, Arc<ServiceModel>>;
/// Changed services (`None`: removed).
pub type ChangedServices = [(ServiceName, Option<Arc<ServiceModel>>)];

/// What one sync did, in the mode's own units (map operations, rules, listeners).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Write operations issued.
    pub writes: usize,
    /// Services (re)programmed.
    pub services: usize,
}

/// Metrics a mode adds to the exposition, rendered at scrape time (Prometheus text format).
pub trait ModeMetrics: Send + Sync {
    fn render(&self, out: &mut String);
}

/// A mode's metric state: updated by its syncs, read when the metrics are scraped.
#[derive(Debug, Default)]
pub struct MetricsCell<S>(std::sync::Mutex<S>);

impl<S> MetricsCell<S> {
    /// Changes the state (a poisoned lock skips the update: metrics are best effort).
    pub fn update(&self, f: impl FnOnce(&mut S)) {
        if let Ok(mut s) = self.0.lock() {
            f(&mut s);
        }
    }

    /// The state, for rendering (`None` once poisoned).
    pub fn get(&self) -> Option<std::sync::MutexGuard<'_, S>> {
        self.0.lock().ok()
    }
}

/// When a mode syncs and does its housekeeping (the sync loop reads it once).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// `--min-sync-period` when the flag is not given.
    pub min_sync_period: Duration,
    /// How often the periodic sync is a full one (`None`: every `--sync-period`); the other
    /// periodic syncs are partial syncs without changes.
    pub full_sync_period: Option<Duration>,
    /// How often [`Proxier::housekeeping`] runs (`None`: never).
    pub housekeeping_interval: Option<Duration>,
}

impl Timing {
    /// Programming costs microseconds (map writes): changes apply within 10 ms, every
    /// periodic sync is a full one, no housekeeping.
    pub const DEFAULT: Timing = Timing {
        min_sync_period: Duration::from_millis(10),
        full_sync_period: None,
        housekeeping_interval: None,
    };

    /// kube-proxy's for the modes that write rules: `--min-sync-period` 1 s (a ruleset
    /// restore costs milliseconds to seconds), full syncs hourly with partial ones between,
    /// the canary (or table) check every 30 s.
    pub const KUBE_PROXY: Timing = Timing {
        min_sync_period: Duration::from_secs(1),
        full_sync_period: Some(Duration::from_secs(3600)),
        housekeeping_interval: Some(Duration::from_secs(30)),
    };
}

/// One proxy mode.
///
/// The sync loop calls these from a blocking thread, one at a time. A failed
/// [`Proxier::sync_changed`] is followed by a [`Proxier::sync_full`].
pub trait Proxier: Send + 'static {
    fn mode(&self) -> ProxyMode;

    /// The node's facts changed; the next sync is a full one.
    fn set_node(&mut self, node: &NodeInfo);

    /// Programs the changed services only (a partial sync).
    fn sync_changed(&mut self, changed: &ChangedServices) -> Result<SyncStats>;

    /// Makes the node's state exactly `all`: re-reads what the kernel holds and repairs any
    /// difference (a full sync; also the first sync after start).
    fn sync_full(&mut self, all: &Models) -> Result<SyncStats>;

    /// Periodic work besides syncing (conntrack GC, canary checks, ...), every
    /// [`Timing::housekeeping_interval`].
    fn housekeeping(&mut self) -> Result<()>;

    /// When the mode syncs and does its housekeeping.
    fn timing(&self) -> Timing {
        Timing::DEFAULT
    }

    /// The mode's metrics (per-service counters, its own sync figures).
    fn metrics(&self) -> Arc<dyn ModeMetrics>;
}

/// Where each mode keeps its node state (all modes' cleanup needs it).
#[derive(Clone, Debug)]
pub struct CleanupContext {
    pub node_name: String,
    /// eBPF pins root (`<bpf_root>/<node>/`).
    pub bpf_root: PathBuf,
}

/// Removes every trace of `mode` on this node (programs, links, pins, maps; chains and
/// listeners for the modes that have them). Idempotent.
pub fn cleanup(mode: ProxyMode, ctx: &CleanupContext) -> Result<()> {
    match mode {
        ProxyMode::Ebpf => ebpf::cleanup(ctx),
        ProxyMode::Iptables => iptables::cleanup(ctx),
        ProxyMode::Nftables => nftables::cleanup(ctx),
        ProxyMode::Userspace => userspace::cleanup(ctx),
    }
}

/// Removes the state of every mode but `active` (starting in one mode after another).
pub fn cleanup_other_modes(active: ProxyMode, ctx: &CleanupContext) -> Result<()> {
    for m in ProxyMode::ALL.into_iter().filter(|m| *m != active) {
        cleanup(m, ctx)?;
    }
    Ok(())
}

/// Removes every mode's state (`--cleanup`).
pub fn cleanup_all(ctx: &CleanupContext) -> Result<()> {
    for m in ProxyMode::ALL {
        cleanup(m, ctx)?;
    }
    Ok(())
}
