//! The eBPF mode behind the [`Proxier`] seam: the datapath (socket LB on the node's cgroup, XDP
//! and tc on the uplink, tc on every pod veth) and the incremental [`Engine`] writing its maps.
//!
//! Partial syncs apply the engine's operations for the changed services only; a full sync
//! re-reads every owned map from the kernel and applies `plan(actual, desired)`, which repairs
//! whatever changed behind the agent's back (an entry deleted by hand is back after one
//! `--sync-period`). Maps and links are pinned under `<bpf-root>/<node>/`, so a restarted agent
//! adopts the ids it finds and rewrites nothing for unchanged services.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use aya::{
    maps::{MapData, PerCpuArray},
    programs::XdpMode,
};
use futures::TryStreamExt as _;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use xkube_common::lb::ServiceCounters;

use super::{
    ChangedServices, CleanupContext, MetricsCell, ModeMetrics, Models, NodeInfo, Proxier,
    ProxyMode, SyncStats, Timing,
};
use crate::{
    Error, Result,
    dataplane::{
        IdleTimeouts, Maps, NodeContext, apply,
        engine::Engine,
        gc, ktime_now_ns, plan, read_actual,
        writer::{ApplyStats, GcStats},
    },
    ebpf::datapath::{self, Datapath, PIN_ROOT},
};

/// XDP attach mode for the uplink.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpAttach {
    /// Native (driver) mode; needs driver support (veth has it).
    Driver,
    /// Generic (skb) mode: works everywhere, slower.
    Skb,
}

impl From<XdpAttach> for XdpMode {
    fn from(m: XdpAttach) -> Self {
        match m {
            XdpAttach::Driver => XdpMode::Driver,
            XdpAttach::Skb => XdpMode::Skb,
        }
    }
}

/// Flags of the eBPF mode.
#[derive(clap::Args, Debug, Clone)]
pub struct EbpfOptions {
    /// The node's uplink interface (XDP + tc egress).
    #[arg(long, env = "XKUBE_UPLINK", default_value = "eth0")]
    pub uplink: String,
    /// XDP attach mode on the uplink.
    #[arg(long, value_enum, default_value_t = XdpAttach::Driver)]
    pub xdp_mode: XdpAttach,
    /// cgroup v2 directory whose processes get socket-level load balancing (default: the
    /// agent's own cgroup, which holds the node's pods in `xkube agent`).
    #[arg(long, env = "XKUBE_PROXY_CGROUP")]
    pub cgroup: Option<PathBuf>,
    /// The pod bridge: tc programs attach to every veth on it.
    #[arg(long, default_value = "cbr0")]
    pub pod_bridge: String,
    /// Root of the pinned maps and links (per node below it).
    #[arg(long, default_value = PIN_ROOT)]
    pub bpf_root: PathBuf,
}

impl Default for EbpfOptions {
    fn default() -> Self {
        Self {
            uplink: "eth0".into(),
            xdp_mode: XdpAttach::Driver,
            cgroup: None,
            pod_bridge: "cbr0".into(),
            bpf_root: PIN_ROOT.into(),
        }
    }
}

/// Removes every program, link, pin and map of the node.
pub fn cleanup(ctx: &CleanupContext) -> Result<()> {
    let dir = ctx.bpf_root.join(&ctx.node_name);
    datapath::teardown(&dir)?;
    debug!(dir = %dir.display(), "eBPF state removed");
    Ok(())
}

/// The eBPF node context of a node: the hairpin source is the pod bridge's address (the first
/// of the pod CIDR).
pub fn node_context(info: &NodeInfo, uplink_ifindex: u32) -> NodeContext {
    let primary = info.addrs.first().copied().unwrap_or(Ipv4Addr::UNSPECIFIED);
    let mut ctx = NodeContext::new(info.name.clone(), primary);
    ctx.node_addrs = info.addrs.clone();
    ctx.pod_cidr = info.pod_cidr;
    ctx.cluster_cidr = info.cluster_cidr;
    ctx.hairpin_addr = info
        .pod_cidr
        .map(|c| Ipv4Addr::from(u32::from(c.network()) + 1))
        .unwrap_or(Ipv4Addr::UNSPECIFIED);
    ctx.uplink_ifindex = uplink_ifindex;
    ctx
}

/// What the metrics endpoint shows of the eBPF mode.
#[derive(Default)]
struct MetricsState {
    /// service id -> "namespace/name:port/proto"
    names: BTreeMap<u16, String>,
    last_apply: ApplyStats,
    /// Entries a full sync found wrong in the kernel and rewrote.
    repaired: u64,
    last_gc: Option<GcStats>,
    pod_links: usize,
}

/// The eBPF mode's metrics: per-service counters read from the kernel at scrape time.
pub struct EbpfMetrics {
    state: MetricsCell<MetricsState>,
    counters: Mutex<Option<PerCpuArray<MapData, ServiceCounters>>>,
}

impl EbpfMetrics {
    fn new(counters: Option<PerCpuArray<MapData, ServiceCounters>>) -> Self {
        Self {
            state: MetricsCell::default(),
            counters: Mutex::new(counters),
        }
    }

    fn update(&self, f: impl FnOnce(&mut MetricsState)) {
        self.state.update(f);
    }

    fn sums(&self, ids: impl Iterator<Item = u16>) -> BTreeMap<u16, ServiceCounters> {
        let Ok(guard) = self.counters.lock() else {
            return BTreeMap::new();
        };
        let Some(c) = guard.as_ref() else {
            return BTreeMap::new();
        };
        let mut out = BTreeMap::new();
        for id in ids {
            let Ok(per_cpu) = c.get(&u32::from(id), 0) else {
                continue;
            };
            let mut sum = ServiceCounters::default();
            for v in per_cpu.iter() {
                sum.packets += v.packets;
                sum.bytes += v.bytes;
                sum.connections += v.connections;
                sum.rejected += v.rejected;
            }
            out.insert(id, sum);
        }
        out
    }
}

impl ModeMetrics for EbpfMetrics {
    fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let Some(s) = self.state.get() else {
            return;
        };
        let sums = self.sums(s.names.keys().copied());
        for (metric, help, get) in [
            (
                "xkube_proxy_service_packets_total",
                "Packets translated per service port (tc and XDP paths).",
                (|c: &ServiceCounters| c.packets) as fn(&ServiceCounters) -> u64,
            ),
            (
                "xkube_proxy_service_bytes_total",
                "Bytes translated per service port (tc and XDP paths).",
                |c| c.bytes,
            ),
            (
                "xkube_proxy_service_connections_total",
                "New connections per service port (socket LB connects/sends, new conntrack flows).",
                |c| c.connections,
            ),
            (
                "xkube_proxy_service_rejected_total",
                "New connections refused because the service had no endpoints or no SNAT source port was free for a remote backend.",
                |c| c.rejected,
            ),
        ] {
            let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} counter");
            for (id, name) in &s.names {
                let v = sums.get(id).map(get).unwrap_or(0);
                let _ = writeln!(out, "{metric}{{service=\"{name}\"}} {v}");
            }
        }
        let _ = writeln!(
            out,
            "# HELP xkube_proxy_ebpf_map_writes Map upserts and deletes of the last sync.\n# TYPE xkube_proxy_ebpf_map_writes gauge\nxkube_proxy_ebpf_map_writes{{op=\"upsert\"}} {}\nxkube_proxy_ebpf_map_writes{{op=\"delete\"}} {}",
            s.last_apply.upserts, s.last_apply.deletes
        );
        let _ = writeln!(
            out,
            "# HELP xkube_proxy_ebpf_drift_repaired_total Map entries full syncs found wrong in the kernel and rewrote.\n# TYPE xkube_proxy_ebpf_drift_repaired_total counter\nxkube_proxy_ebpf_drift_repaired_total {}",
            s.repaired
        );
        if let Some(g) = &s.last_gc {
            let _ = writeln!(
                out,
                "# HELP xkube_proxy_conntrack_entries Conntrack entries seen by the last GC pass.\n# TYPE xkube_proxy_conntrack_entries gauge\nxkube_proxy_conntrack_entries {}",
                g.conntrack_scanned
            );
        }
        let _ = writeln!(
            out,
            "# HELP xkube_proxy_pod_interfaces Pod veths with the tc programs attached.\n# TYPE xkube_proxy_pod_interfaces gauge\nxkube_proxy_pod_interfaces {}",
            s.pod_links
        );
    }
}

/// The eBPF mode: the engine and the maps it writes (module docs).
pub struct EbpfProxier {
    engine: Engine,
    maps: Maps,
    uplink_ifindex: u32,
    idle: IdleTimeouts,
    gc_interval: Duration,
    metrics: Arc<EbpfMetrics>,
    /// Keeps the datapath (programs, links) loaded while the mode runs; `None` in tests that
    /// load it themselves.
    _datapath: Option<Arc<Mutex<Datapath>>>,
}

impl std::fmt::Debug for EbpfProxier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EbpfProxier")
            .field("services", &self.engine.services())
            .finish_non_exhaustive()
    }
}

impl EbpfProxier {
    /// The mode over `maps` (taken from a loaded object or opened from pins) for the node
    /// `ctx`. What the maps hold is read once, so the engine adopts the ids in them.
    pub fn new(
        maps: Maps,
        ctx: NodeContext,
        counters: Option<PerCpuArray<MapData, ServiceCounters>>,
    ) -> Result<Self> {
        let actual = read_actual(&maps)?;
        info!(
            services = actual.services.len(),
            backends = actual.backends.len(),
            "eBPF mode: actual map state read"
        );
        Ok(Self {
            uplink_ifindex: ctx.uplink_ifindex,
            engine: Engine::new(ctx, &actual),
            maps,
            idle: IdleTimeouts::default(),
            gc_interval: Duration::from_secs(30),
            metrics: Arc::new(EbpfMetrics::new(counters)),
            _datapath: None,
        })
    }

    /// Loads the datapath with the node's pins (reusing what an earlier run left: a restart
    /// drops no traffic), attaches the socket LB to the cgroup and XDP + tc to the uplink,
    /// and keeps tc attached to every pod veth on the pod bridge (polled once a second until
    /// `shutdown`).
    pub fn start(
        opts: &EbpfOptions,
        node: &NodeInfo,
        shutdown: &CancellationToken,
    ) -> Result<Self> {
        let pin_dir = opts.bpf_root.join(&node.name);
        let mut dp = Datapath::load(Some(&pin_dir))?;
        dp.attach_uplink(&opts.uplink, opts.xdp_mode.into())?;
        let cgroup = match &opts.cgroup {
            Some(c) => c.clone(),
            None => own_cgroup()?,
        };
        dp.attach_cgroup(&cgroup)?;
        info!(uplink = %opts.uplink, cgroup = %cgroup.display(), "datapath attached");
        let maps = Maps::from_pins(&pin_dir.join(xkube_common::lb::PIN_MAPS_DIR))?;
        let counters = Maps::from_pins(&pin_dir.join(xkube_common::lb::PIN_MAPS_DIR))?.counters;
        let ifindex = ifindex(&opts.uplink)?;
        let mut p = Self::new(maps, node_context(node, ifindex), Some(counters))?;
        let dp = Arc::new(Mutex::new(dp));
        tokio::spawn(watch_pod_veths(
            opts.pod_bridge.clone(),
            dp.clone(),
            p.metrics.clone(),
            shutdown.clone(),
        ));
        p._datapath = Some(dp);
        Ok(p)
    }

    /// Conntrack idle timeouts and the GC interval.
    pub fn set_gc(&mut self, idle: IdleTimeouts, interval: Duration) {
        self.idle = idle;
        self.gc_interval = interval;
    }

    /// The maps (for tests that inspect or disturb them).
    pub fn maps_mut(&mut self) -> &mut Maps {
        &mut self.maps
    }

    fn publish_names(&self, changed: Vec<(u16, Option<String>)>) {
        self.metrics.update(|s| {
            for (id, name) in changed {
                match name {
                    Some(n) => s.names.insert(id, n),
                    None => s.names.remove(&id),
                };
            }
        });
    }
}

impl Proxier for EbpfProxier {
    fn mode(&self) -> ProxyMode {
        ProxyMode::Ebpf
    }

    fn set_node(&mut self, node: &NodeInfo) {
        // The operations are dropped: the sync loop follows a node change with a full sync,
        // which writes the node entries too.
        let _ = self
            .engine
            .set_node(node_context(node, self.uplink_ifindex));
    }

    fn sync_changed(&mut self, changed: &ChangedServices) -> Result<SyncStats> {
        let up = self.engine.update(changed);
        let st = apply(&mut self.maps, &up.ops)?;
        self.engine.commit();
        self.metrics.update(|s| s.last_apply = st);
        self.publish_names(up.names);
        Ok(SyncStats {
            writes: st.upserts + st.deletes,
            services: up.rendered,
        })
    }

    fn sync_full(&mut self, all: &Models) -> Result<SyncStats> {
        let up = self.engine.sync_all(all);
        let want = self.engine.desired();
        let actual = read_actual(&self.maps)?;
        let ops = plan(&actual, &want);
        let st = apply(&mut self.maps, &ops)?;
        self.engine.commit();
        // With no service changed since the last sync, every operation repairs drift.
        let repaired = if up.rendered == 0 { ops.len() } else { 0 };
        if repaired > 0 {
            info!(entries = repaired, "full sync repaired map entries");
        }
        let names = self.engine.service_names();
        self.metrics.update(|s| {
            s.last_apply = st;
            s.repaired += repaired as u64;
            s.names = names;
        });
        Ok(SyncStats {
            writes: st.upserts + st.deletes,
            services: all.len(),
        })
    }

    fn housekeeping(&mut self) -> Result<()> {
        let st = gc(&mut self.maps, ktime_now_ns()?, &self.idle)?;
        debug!(?st, "conntrack GC");
        self.metrics.update(|s| s.last_gc = Some(st));
        Ok(())
    }

    /// Conntrack GC every `--conntrack-gc-interval`.
    fn timing(&self) -> Timing {
        Timing {
            housekeeping_interval: Some(self.gc_interval),
            ..Timing::DEFAULT
        }
    }

    fn metrics(&self) -> Arc<dyn ModeMetrics> {
        self.metrics.clone()
    }
}

fn ifindex(iface: &str) -> Result<u32> {
    nix::net::if_::if_nametoindex(iface).map_err(|e| Error::Uplink {
        iface: iface.to_owned(),
        reason: e.to_string(),
    })
}

/// The cgroup v2 directory of this process.
fn own_cgroup() -> Result<PathBuf> {
    xkube_netns::cgroup::own().map_err(|e| Error::NodeConfig {
        node: String::new(),
        reason: format!("this process's cgroup: {e}"),
    })
}

/// Attaches the pod programs to every veth on the pod bridge, and removes the links of veths
/// that went away. Polls the bridge's ports once a second (the proxy does not depend on the
/// kubelet to tell it about pods).
async fn watch_pod_veths(
    bridge: String,
    dp: Arc<Mutex<Datapath>>,
    metrics: Arc<EbpfMetrics>,
    shutdown: CancellationToken,
) {
    let mut attached: BTreeSet<String> = BTreeSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let ports = match bridge_ports(&bridge).await {
            Ok(p) => p,
            Err(e) => {
                debug!(bridge = %bridge, error = %e, "listing pod bridge ports");
                continue;
            }
        };
        for p in ports.difference(&attached).cloned().collect::<Vec<_>>() {
            let r = dp.lock().map_err(|_| ()).map(|mut d| d.attach_pod(&p));
            match r {
                Ok(Ok(())) => {
                    debug!(veth = %p, "pod programs attached");
                    attached.insert(p);
                }
                Ok(Err(e)) => warn!(veth = %p, error = %e, "attaching pod programs"),
                Err(()) => return,
            }
        }
        for p in attached.difference(&ports).cloned().collect::<Vec<_>>() {
            if let Ok(mut d) = dp.lock()
                && let Err(e) = d.detach_pod(&p)
            {
                debug!(veth = %p, error = %e, "removing pod links");
            }
            attached.remove(&p);
        }
        let n = attached.len();
        metrics.update(|s| s.pod_links = n);
    }
}

/// Names of the links enslaved to `bridge` (excluding the bridge itself).
async fn bridge_ports(bridge: &str) -> std::result::Result<BTreeSet<String>, String> {
    use rtnetlink::packet_route::link::LinkAttribute;
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut links = handle.link().get().execute();
    let mut all = Vec::new();
    while let Some(l) = links.try_next().await.map_err(|e| e.to_string())? {
        all.push(l);
    }
    let name_of = |l: &rtnetlink::packet_route::link::LinkMessage| {
        l.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        })
    };
    let Some(br) = all
        .iter()
        .find(|l| name_of(l).as_deref() == Some(bridge))
        .map(|l| l.header.index)
    else {
        return Ok(BTreeSet::new());
    };
    Ok(all
        .iter()
        .filter(|l| {
            l.attributes
                .iter()
                .any(|a| matches!(a, LinkAttribute::Controller(c) if *c == br))
        })
        .filter_map(name_of)
        .collect())
}
