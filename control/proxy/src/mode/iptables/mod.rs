//! The iptables mode: Kubernetes 1.33 kube-proxy's iptables proxier, rule for rule.
//!
//! Every sync is one `iptables-restore --noflush` input ([`rules::restore_input`]). A partial
//! sync (on changes, and every `--sync-period` without any) rewrites the top-level chains and
//! the changed services' own chains only; the chains of unchanged services stay as they are
//! in the kernel. A full sync (the first, hourly, after a failure, and when the canary chain
//! disappeared) rewrites every chain, deletes chains no service owns any more, and inserts
//! the jumps from the built-in chains that are missing. UDP flows translated to endpoints that no longer serve their
//! service are deleted from conntrack over netlink ([`crate::conntrack`]), as kube-proxy's
//! conntrack reconciler does, so a DNS client is not stuck on a dead pod.
//!
//! The rules stay in the kernel when the agent stops (a restart drops no traffic); `--cleanup`
//! and starting another mode remove them ([`cleanup`]).

pub mod exec;
pub mod rules;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use tracing::{debug, info, warn};

use self::{
    exec::{BackendChoice, Iptables, declared_chains, rules_of},
    rules::{
        FullSyncExtras, JUMP_RULES, KUBE_PROXY_CANARY, LARGE_CLUSTER_ENDPOINTS, RenderContext,
        SERVICE_CHAIN_PREFIXES, ServiceRules, is_our_chain, render_service, restore_input,
    },
};
use super::{
    ChangedServices, CleanupContext, MetricsCell, ModeMetrics, Models, NodeInfo, Proxier,
    ProxyMode, SyncStats, Timing,
};
use crate::{
    Result, conntrack,
    model::{ServiceModel, ServiceName},
};

/// Flags of the iptables mode.
#[derive(clap::Args, Debug, Clone)]
pub struct IptablesOptions {
    /// Which iptables backend to program.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    pub iptables_backend: BackendChoice,
    /// SNAT all traffic sent via service cluster IPs (kube-proxy's --masquerade-all; the
    /// iptables and nftables modes).
    #[arg(long)]
    pub masquerade_all: bool,
}

impl Default for IptablesOptions {
    fn default() -> Self {
        Self {
            iptables_backend: BackendChoice::Auto,
            masquerade_all: false,
        }
    }
}

/// Removes this mode's chains and its jumps from the built-in chains, in both backends
/// ([`exec::remove_everywhere`]). A chain of ours that another program's rule still jumps to
/// (a CNI plugin using `KUBE-MARK-MASQ`) is kept.
pub fn cleanup(_ctx: &CleanupContext) -> Result<()> {
    exec::remove_everywhere("iptables", cleanup_input)
}

/// The restore input removing this mode's state from `save` (every table); empty when there
/// is none.
pub fn cleanup_input(save: &str) -> String {
    let mut input = String::new();
    for (table, body) in exec::tables(save) {
        let ours: Vec<&str> = declared_chains(&body).filter(|c| is_our_chain(c)).collect();
        if ours.is_empty() {
            continue;
        }
        let mut ours_jumps = Vec::new();
        let mut referenced: BTreeSet<&str> = BTreeSet::new();
        for rest in body.lines().filter_map(|l| l.strip_prefix("-A ")) {
            let chain = rest.split_whitespace().next().unwrap_or("");
            if is_our_chain(chain) {
                continue;
            }
            let spec = rest[chain.len()..].trim_start();
            let ours_jump = JUMP_RULES
                .iter()
                .any(|j| j.table == table && j.from == chain && j.spec() == spec);
            if ours_jump {
                ours_jumps.push(rest);
            } else if let Some(t) = spec.rsplit_once("-j ").map(|(_, t)| t.trim())
                && ours.contains(&t)
            {
                referenced.insert(t);
            }
        }
        let gone: Vec<&&str> = ours.iter().filter(|c| !referenced.contains(*c)).collect();
        input.push_str(&format!("*{table}\n"));
        for c in &gone {
            input.push_str(&format!(":{c} - [0:0]\n"));
        }
        for rest in ours_jumps {
            input.push_str(&format!("-D {rest}\n"));
        }
        for c in &gone {
            input.push_str(&format!("-X {c}\n"));
        }
        input.push_str("COMMIT\n");
    }
    input
}

#[derive(Default)]
struct MetricsState {
    /// Rules this mode owns in the kernel, per table (`None` before the first sync).
    total: Option<(usize, usize)>,
    /// Rules written by the last sync (nat, filter).
    last: (usize, usize),
    restore_failures: u64,
    partial_restore_failures: u64,
    canary_resyncs: u64,
    conntrack_deleted: u64,
}

/// kube-proxy's iptables metrics (and the conntrack reconciler's).
type IptablesMetrics = MetricsCell<MetricsState>;

impl ModeMetrics for IptablesMetrics {
    fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let Some(s) = self.get() else {
            return;
        };
        let (nat, filter) = s.total.unwrap_or((0, 0));
        let fam = "ip_family=\"IPv4\"";
        let _ = writeln!(
            out,
            "# HELP kubeproxy_sync_proxy_rules_iptables_total Total number of iptables rules owned by kube-proxy\n\
             # TYPE kubeproxy_sync_proxy_rules_iptables_total gauge\n\
             kubeproxy_sync_proxy_rules_iptables_total{{{fam},table=\"filter\"}} {filter}\n\
             kubeproxy_sync_proxy_rules_iptables_total{{{fam},table=\"nat\"}} {nat}\n\
             # HELP kubeproxy_sync_proxy_rules_iptables_last Number of iptables rules written by kube-proxy in last sync\n\
             # TYPE kubeproxy_sync_proxy_rules_iptables_last gauge\n\
             kubeproxy_sync_proxy_rules_iptables_last{{{fam},table=\"filter\"}} {}\n\
             kubeproxy_sync_proxy_rules_iptables_last{{{fam},table=\"nat\"}} {}\n\
             # HELP kubeproxy_sync_proxy_rules_iptables_restore_failures_total Cumulative proxy iptables restore failures\n\
             # TYPE kubeproxy_sync_proxy_rules_iptables_restore_failures_total counter\n\
             kubeproxy_sync_proxy_rules_iptables_restore_failures_total{{{fam}}} {}\n\
             # HELP kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total Cumulative proxy iptables partial restore failures\n\
             # TYPE kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total counter\n\
             kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total{{{fam}}} {}\n\
             # HELP kubeproxy_conntrack_reconciler_deleted_entries_total Cumulative conntrack flows deleted by the conntrack reconciler\n\
             # TYPE kubeproxy_conntrack_reconciler_deleted_entries_total counter\n\
             kubeproxy_conntrack_reconciler_deleted_entries_total{{{fam}}} {}\n\
             # HELP xkube_proxy_iptables_canary_resyncs_total Full syncs forced because the canary chain disappeared.\n\
             # TYPE xkube_proxy_iptables_canary_resyncs_total counter\n\
             xkube_proxy_iptables_canary_resyncs_total {}",
            s.last.1,
            s.last.0,
            s.restore_failures,
            s.partial_restore_failures,
            s.conntrack_deleted,
            s.canary_resyncs,
        );
    }
}

/// Rule lines (`-A`, `-I`) of a restore input per table (nat, filter), as kube-proxy counts
/// them (chain declarations, `-X` and COMMIT are not rules).
fn rule_lines(input: &str) -> (usize, usize) {
    let (mut nat, mut filter, mut table) = (0, 0, "");
    for l in input.lines() {
        if let Some(t) = l.strip_prefix('*') {
            table = t;
        } else if l.starts_with("-A ") || l.starts_with("-I ") {
            match table {
                "nat" => nat += 1,
                "filter" => filter += 1,
                _ => {}
            }
        }
    }
    (nat, filter)
}

/// The iptables mode (module docs).
pub struct IptablesProxier {
    ipt: Iptables,
    ctx: RenderContext,
    models: BTreeMap<ServiceName, Arc<ServiceModel>>,
    rules: BTreeMap<ServiceName, ServiceRules>,
    /// Endpoints of every service port (large cluster mode).
    endpoints: usize,
    metrics: Arc<IptablesMetrics>,
}

impl std::fmt::Debug for IptablesProxier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IptablesProxier")
            .field("backend", &self.ipt.backend)
            .field("services", &self.rules.len())
            .finish_non_exhaustive()
    }
}

fn endpoint_count(m: &ServiceModel) -> usize {
    m.ports.iter().map(|p| p.endpoints.len()).sum()
}

fn render_context(node: &NodeInfo, masquerade_all: bool, large_cluster: bool) -> RenderContext {
    RenderContext {
        node_name: node.name.clone(),
        node_ip: node
            .addrs
            .first()
            .copied()
            .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
        pod_cidr: node.pod_cidr,
        cluster_cidr: node.cluster_cidr,
        masquerade_all,
        large_cluster,
    }
}

impl IptablesProxier {
    /// The mode for `node` on the backend `opts` chooses. Nothing is written before the first
    /// (full) sync.
    pub fn new(opts: &IptablesOptions, node: &NodeInfo) -> Result<Self> {
        let ipt = Iptables::choose(opts.iptables_backend);
        if !ipt.available() {
            return Err(crate::Error::Flag {
                flag: "iptables-backend",
                reason: format!("iptables-{}-restore is not installed", ipt.backend.name()),
            });
        }
        info!(backend = ipt.backend.name(), "iptables mode");
        Ok(Self {
            ipt,
            ctx: render_context(node, opts.masquerade_all, false),
            models: BTreeMap::new(),
            rules: BTreeMap::new(),
            endpoints: 0,
            metrics: Arc::new(IptablesMetrics::default()),
        })
    }

    pub fn backend(&self) -> exec::Backend {
        self.ipt.backend
    }

    /// Re-renders every service when the large-cluster mode flips; `true` if it did.
    fn check_large_cluster(&mut self) -> bool {
        let large = self.endpoints > LARGE_CLUSTER_ENDPOINTS;
        if large == self.ctx.large_cluster {
            return false;
        }
        self.ctx.large_cluster = large;
        self.rules = self
            .models
            .iter()
            .map(|(n, m)| (n.clone(), render_service(m, &self.ctx)))
            .collect();
        true
    }

    /// Publishes the rule counts after a successful restore of `input`.
    fn publish_counts(&self, input: &str) {
        let (nat, filter) = self.rules.values().fold((0, 0), |(n, f), r| {
            let (a, b) = r.rule_counts();
            (n + a, f + b)
        });
        let last = rule_lines(input);
        self.metrics.update(|s| {
            // The fixed rules: KUBE-POSTROUTING (3), KUBE-MARK-MASQ, the node ports jump;
            // KUBE-FORWARD (3).
            s.total = Some((nat + 5, filter + 3));
            s.last = last;
        });
    }

    /// The full sync (module docs) from the models held; the number of lines written.
    fn write_all(&mut self) -> Result<usize> {
        let nat = self.ipt.save(Some("nat"))?;
        let filter = self.ipt.save(Some("filter"))?;
        let wanted: BTreeSet<&str> = self
            .rules
            .values()
            .flat_map(|r| r.chains())
            .map(String::as_str)
            .collect();
        let stale: BTreeSet<String> = declared_chains(&nat)
            .filter(|c| SERVICE_CHAIN_PREFIXES.iter().any(|p| c.starts_with(p)))
            .filter(|c| !wanted.contains(c))
            .map(str::to_owned)
            .collect();
        let jumps = JUMP_RULES
            .iter()
            .filter(|j| {
                let save = if j.table == "nat" { &nat } else { &filter };
                let spec = j.spec();
                !rules_of(save, j.from).any(|r| r == spec)
            })
            .copied()
            .collect();
        let extras = FullSyncExtras {
            canary: true,
            jumps,
        };
        let input = restore_input(&self.rules, None, &stale, &extras);
        if let Err(e) = self.ipt.restore(&input) {
            self.metrics.update(|s| s.restore_failures += 1);
            return Err(e);
        }
        debug!(
            stale = stale.len(),
            jumps = extras.jumps.len(),
            "full iptables sync"
        );
        self.publish_counts(&input);
        let (nat, filter) = rule_lines(&input);
        Ok(nat + filter + stale.len())
    }

    /// Whether the mangle table's canary is gone (kube-proxy polls that one; a flush of the
    /// nat or filter table also breaks the next partial sync, which a full sync follows).
    fn canary_lost(&self) -> Result<bool> {
        Ok(!self.ipt.chain_exists("mangle", KUBE_PROXY_CANARY)?)
    }

    /// Deletes UDP flows to `services` whose endpoint no longer serves them.
    fn reconcile_conntrack(&self, services: &[&ServiceRules]) {
        let udp: Vec<&conntrack::UdpService> = services
            .iter()
            .flat_map(|r| r.ports.iter())
            .filter_map(|p| p.udp.as_ref())
            .collect();
        let n = conntrack::reconcile(&udp);
        if n > 0 {
            self.metrics.update(|s| s.conntrack_deleted += n);
        }
    }
}

impl Proxier for IptablesProxier {
    fn mode(&self) -> ProxyMode {
        ProxyMode::Iptables
    }

    fn set_node(&mut self, node: &NodeInfo) {
        // Rendered again by the full sync that follows a node change.
        self.ctx = render_context(node, self.ctx.masquerade_all, self.ctx.large_cluster);
    }

    fn sync_changed(&mut self, changed: &ChangedServices) -> Result<SyncStats> {
        let mut stale: BTreeSet<String> = BTreeSet::new();
        let mut write: BTreeSet<ServiceName> = BTreeSet::new();
        for (name, model) in changed {
            if let Some(old) = self.models.remove(name) {
                self.endpoints -= endpoint_count(&old);
            }
            let old_chains: Vec<String> = self
                .rules
                .remove(name)
                .map(|r| r.chains().cloned().collect())
                .unwrap_or_default();
            if let Some(m) = model {
                self.endpoints += endpoint_count(m);
                let r = render_service(m, &self.ctx);
                self.models.insert(name.clone(), m.clone());
                self.rules.insert(name.clone(), r);
                write.insert(name.clone());
            }
            stale.extend(old_chains);
        }
        // A chain a changed service still has is rewritten, not deleted.
        for n in &write {
            if let Some(r) = self.rules.get(n) {
                for c in r.chains() {
                    stale.remove(c);
                }
            }
        }
        let all = self.check_large_cluster();
        let input = restore_input(
            &self.rules,
            (!all).then_some(&write),
            &stale,
            &FullSyncExtras::default(),
        );
        if let Err(e) = self.ipt.restore(&input) {
            self.metrics.update(|s| {
                s.restore_failures += 1;
                s.partial_restore_failures += 1;
            });
            return Err(e);
        }
        self.publish_counts(&input);
        let touched: Vec<&ServiceRules> = write.iter().filter_map(|n| self.rules.get(n)).collect();
        self.reconcile_conntrack(&touched);
        let (nat, filter) = rule_lines(&input);
        Ok(SyncStats {
            writes: nat + filter + stale.len(),
            services: changed.len(),
        })
    }

    fn sync_full(&mut self, all: &Models) -> Result<SyncStats> {
        self.models = all.clone();
        self.endpoints = all.values().map(|m| endpoint_count(m)).sum();
        self.ctx.large_cluster = self.endpoints > LARGE_CLUSTER_ENDPOINTS;
        self.rules = all
            .iter()
            .map(|(n, m)| (n.clone(), render_service(m, &self.ctx)))
            .collect();
        let lines = self.write_all()?;
        let every: Vec<&ServiceRules> = self.rules.values().collect();
        self.reconcile_conntrack(&every);
        Ok(SyncStats {
            writes: lines,
            services: all.len(),
        })
    }

    fn housekeeping(&mut self) -> Result<()> {
        if self.canary_lost()? {
            warn!("an iptables canary chain disappeared (rules flushed?); full sync");
            self.metrics.update(|s| s.canary_resyncs += 1);
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
