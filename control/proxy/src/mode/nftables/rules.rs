//! The nftables mode's ruleset, as Kubernetes 1.33 kube-proxy's nftables proxier writes it
//! (pure).
//!
//! Everything lives in the table `ip kube-proxy`. Base chains at kube-proxy's priorities jump
//! to fixed chains; `services` dispatches with one verdict-map lookup
//! (`ip daddr . meta l4proto . th dport vmap @service-ips`, NodePorts through
//! `@service-nodeports` on the node's own addresses, `@nodeport-ips`); services without
//! endpoints are rejected (or dropped, for a Local policy without local endpoints) through
//! `@no-endpoint-services` / `@no-endpoint-nodeports` from the filter hooks; traffic to a
//! ClusterIP port no service has is rejected by `cluster-ips-check`.
//!
//! [`render_service`] turns one [`ServiceModel`] into its own chains (`service-`, `local-`,
//! `external-`, `firewall-`, `endpoint-`), its affinity sets and the elements it adds to the
//! shared sets and maps. [`full`] and [`partial`] assemble one `nft -f` transaction: the full
//! one recreates the table whole (atomically: `add table`, `delete table`, then everything);
//! the partial one rewrites the changed services' chains, replaces the map elements whose
//! verdict changed and deletes what no service owns any more, leaving every other service
//! untouched in the kernel.
//!
//! Names are kube-proxy's: prefix + the first 8 characters of the base32 of
//! `sha256(base)` + `-` + base, where base is `ns/name/proto/portname` (and
//! `__ip/port` for an endpoint), e.g. `service-ULMVA6XW-ns1/svc1/tcp/p80`.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::Ipv4Addr,
};

use crate::conntrack::UdpService;
use crate::mode::categorize::{categorize, external_policy_local, externally_accessible};
use crate::model::{Endpoint, Ipv4Cidr, Protocol, ServiceModel, ServiceName, ServicePort};

/// The table (family `ip`).
pub const TABLE: &str = "kube-proxy";
/// `add ... ip kube-proxy`: the family and table of every command.
const T: &str = "ip kube-proxy";
/// The masquerade mark (`--masquerade-bit` 14).
pub const MASQ_MARK: &str = "0x4000";

pub const SERVICES: &str = "services";
pub const MARK_MASQ: &str = "mark-for-masquerade";
pub const MASQUERADING: &str = "masquerading";
pub const SERVICE_ENDPOINTS_CHECK: &str = "service-endpoints-check";
pub const NODEPORT_ENDPOINTS_CHECK: &str = "nodeport-endpoints-check";
pub const FIREWALL_CHECK: &str = "firewall-check";
pub const CLUSTER_IPS_CHECK: &str = "cluster-ips-check";
pub const REJECT_CHAIN: &str = "reject-chain";

pub const CLUSTER_IPS: &str = "cluster-ips";
pub const NODEPORT_IPS: &str = "nodeport-ips";
pub const SERVICE_IPS: &str = "service-ips";
pub const SERVICE_NODEPORTS: &str = "service-nodeports";
pub const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
pub const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";
pub const FIREWALL_IPS: &str = "firewall-ips";

/// Base chains: name, type, hook, priority (kube-proxy's: filter at dstnat-10, the
/// post-DNAT output filter at dstnat+10, nat at dstnat and srcnat).
pub const BASE_CHAINS: [(&str, &str, &str, i32); 8] = [
    ("filter-prerouting", "filter", "prerouting", -110),
    ("filter-input", "filter", "input", -110),
    ("filter-forward", "filter", "forward", -110),
    ("filter-output", "filter", "output", -110),
    ("filter-output-post-dnat", "filter", "output", -90),
    ("nat-prerouting", "nat", "prerouting", -100),
    ("nat-output", "nat", "output", -100),
    ("nat-postrouting", "nat", "postrouting", 100),
];

/// Jumps from the base chains: to, from, matches before the jump (kube-proxy's order).
pub const JUMPS: [(&str, &str, &str); 11] = [
    (NODEPORT_ENDPOINTS_CHECK, "filter-input", "ct state new"),
    (SERVICE_ENDPOINTS_CHECK, "filter-input", "ct state new"),
    (SERVICE_ENDPOINTS_CHECK, "filter-forward", "ct state new"),
    (SERVICE_ENDPOINTS_CHECK, "filter-output", "ct state new"),
    (FIREWALL_CHECK, "filter-prerouting", "ct state new"),
    (FIREWALL_CHECK, "filter-output", "ct state new"),
    (SERVICES, "nat-output", ""),
    (SERVICES, "nat-prerouting", ""),
    (MASQUERADING, "nat-postrouting", ""),
    (CLUSTER_IPS_CHECK, "filter-forward", "ct state new"),
    (CLUSTER_IPS_CHECK, "filter-output-post-dnat", "ct state new"),
];

/// kube-proxy's `hashAndTruncate`: the first 8 base32 characters of `sha256(base)`, a dash
/// and `base` (cut to nftables' 256-byte names with `...`).
pub fn hash_and_truncate(base: &str) -> String {
    const MAX: usize = 256;
    let digest = ring::digest::digest(&ring::digest::SHA256, base.as_bytes());
    let mut hash = data_encoding::BASE32.encode(digest.as_ref());
    hash.truncate(8);
    let mut name = format!("{hash}-{base}");
    if name.len() > MAX {
        // The base is ASCII ([a-z0-9./_-]).
        name.truncate(MAX - 3);
        name.push_str("...");
    }
    name
}

/// `ns/name/proto/portname` of a service port.
pub fn port_base(svc: &ServiceName, port_name: &str, protocol: Protocol) -> String {
    format!(
        "{}/{}/{}/{port_name}",
        svc.namespace,
        svc.name,
        protocol.lower()
    )
}

/// `<port base>__ip/port` of an endpoint.
pub fn endpoint_base(port_base: &str, e: &Endpoint) -> String {
    format!("{port_base}__{}/{}", e.addr, e.port)
}

/// What rendering needs to know about the node and the flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenderContext {
    pub node_name: String,
    /// The node's addresses: NodePorts answer on these only; the first is the primary one
    /// (loadBalancerSourceRanges that contain it allow the node).
    pub node_ips: Vec<Ipv4Addr>,
    pub pod_cidr: Option<Ipv4Cidr>,
    /// `--cluster-cidr`: the local-traffic detector.
    pub cluster_cidr: Ipv4Cidr,
    /// `--masquerade-all`.
    pub masquerade_all: bool,
}

/// An element of a shared set or map.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Element {
    pub set: &'static str,
    /// `10.96.0.1 . tcp . 80`, `tcp . 30080` or an address.
    pub key: String,
    /// A verdict for maps (`goto service-...`, `drop`); empty for sets.
    pub value: String,
    pub comment: Option<String>,
}

impl Element {
    fn render(&self) -> String {
        let comment = self
            .comment
            .as_ref()
            .map(|c| format!(" comment \"{c}\""))
            .unwrap_or_default();
        if self.value.is_empty() {
            format!("{}{comment}", self.key)
        } else {
            format!("{}{comment} : {}", self.key, self.value)
        }
    }
}

/// A chain a service owns, with its rules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Chain {
    pub name: String,
    pub rules: Vec<String>,
}

/// Everything one Service puts into the table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceNft {
    /// Its chains, endpoint chains first (a chain only refers to chains before it).
    pub chains: Vec<Chain>,
    /// Its ClientIP affinity sets: name, timeout in seconds.
    pub affinity_sets: Vec<(String, u32)>,
    pub elements: Vec<Element>,
    /// UDP frontends and the endpoints serving them, for the conntrack cleanup.
    pub udp: Vec<UdpService>,
}

impl ServiceNft {
    fn element_map(&self) -> BTreeMap<(&'static str, &str), &Element> {
        self.elements
            .iter()
            .map(|e| ((e.set, e.key.as_str()), e))
            .collect()
    }
}

/// The table's contents of one Service (module docs).
pub fn render_service(svc: &ServiceModel, ctx: &RenderContext) -> ServiceNft {
    let mut out = ServiceNft::default();
    for p in &svc.ports {
        render_port(&svc.name, p, ctx, &mut out);
    }
    // One element per key even when several ports share an address (`cluster-ips`).
    let mut seen = BTreeSet::new();
    out.elements.retain(|e| seen.insert((e.set, e.key.clone())));
    out
}

fn render_port(svc: &ServiceName, p: &ServicePort, ctx: &RenderContext, out: &mut ServiceNft) {
    let proto = p.protocol.lower();
    let base = port_base(svc, &p.port_name, p.protocol);
    let name = p.display_name(svc);
    let cat = categorize(p, &ctx.node_name, ctx.pod_cidr);
    let has_endpoints = cat.has_any;

    let cluster_chain = format!("service-{}", hash_and_truncate(&base));
    let local_chain = format!("local-{}", hash_and_truncate(&base));
    let ext_chain = format!("external-{}", hash_and_truncate(&base));
    let fw_chain = format!("firewall-{}", hash_and_truncate(&base));
    let ep_chain =
        |e: &Endpoint| format!("endpoint-{}", hash_and_truncate(&endpoint_base(&base, e)));
    let affinity_set =
        |e: &Endpoint| format!("affinity-{}", hash_and_truncate(&endpoint_base(&base, e)));

    let uses_cluster_chain = !cat.cluster.is_empty();
    let uses_local_chain = !cat.local.is_empty();
    let (internal_chain, has_internal) = cat.policy(p, false, &local_chain, &cluster_chain);
    let (external_policy_chain, has_external) = cat.policy(p, true, &local_chain, &cluster_chain);
    let uses_ext_chain = has_endpoints && externally_accessible(p);
    let (internal_verdict, external_verdict) = if !has_endpoints {
        let reject = format!("goto {REJECT_CHAIN}");
        (reject.clone(), reject)
    } else {
        ("drop".to_string(), "drop".to_string())
    };
    let key = |ip: Ipv4Addr| format!("{ip} . {proto} . {}", p.port);
    let elem = |set, key: String, value: String, comment: Option<&str>| Element {
        set,
        key,
        value,
        comment: comment.map(str::to_owned),
    };

    // The endpoint chains (first: the service chains refer to them).
    for e in &cat.reachable {
        let mut rules = vec![format!("ip saddr {} jump {MARK_MASQ}", e.addr)];
        if let Some(t) = p.affinity_timeout {
            let set = affinity_set(e);
            rules.push(format!("update @{set} {{ ip saddr }}"));
            out.affinity_sets.push((set, t));
        }
        rules.push(format!(
            "meta l4proto {proto} dnat to {}:{}",
            e.addr, e.port
        ));
        out.chains.push(Chain {
            name: ep_chain(e),
            rules,
        });
    }
    let to_endpoints = |chain: &str, eps: &[&Endpoint]| {
        let mut rules = Vec::new();
        if p.affinity_timeout.is_some() {
            for e in eps {
                rules.push(format!(
                    "ip saddr @{} goto {}",
                    affinity_set(e),
                    ep_chain(e)
                ));
            }
        }
        let arms: Vec<String> = eps
            .iter()
            .enumerate()
            .map(|(i, e)| format!("{i} : goto {}", ep_chain(e)))
            .collect();
        rules.push(format!(
            "numgen random mod {} vmap {{ {} }}",
            eps.len(),
            arms.join(" , ")
        ));
        (chain.to_string(), rules)
    };
    let mut policy_chains = Vec::new();
    if uses_cluster_chain {
        policy_chains.push(to_endpoints(&cluster_chain, &cat.cluster));
    }
    if uses_local_chain {
        policy_chains.push(to_endpoints(&local_chain, &cat.local));
    }
    // Off-cluster clients of the cluster IP are masqueraded (all with --masquerade-all).
    if has_internal {
        let masq = if ctx.masquerade_all {
            format!(
                "ip daddr {} {proto} dport {} jump {MARK_MASQ}",
                p.cluster_ip, p.port
            )
        } else {
            format!(
                "ip daddr {} {proto} dport {} ip saddr != {} jump {MARK_MASQ}",
                p.cluster_ip, p.port, ctx.cluster_cidr
            )
        };
        if let Some((_, rules)) = policy_chains.iter_mut().find(|(c, _)| c == internal_chain) {
            rules.insert(0, masq);
        }
    }
    for (name, rules) in policy_chains {
        out.chains.push(Chain { name, rules });
    }

    if uses_ext_chain {
        let mut rules = Vec::new();
        if !external_policy_local(p) {
            rules.push(format!("jump {MARK_MASQ}"));
        } else {
            rules.push(format!(
                "ip saddr {} goto {cluster_chain} comment \"short-circuit pod traffic\"",
                ctx.cluster_cidr
            ));
            rules.push(format!(
                "fib saddr type local jump {MARK_MASQ} comment \"masquerade local traffic\""
            ));
            rules.push(format!(
                "fib saddr type local goto {cluster_chain} comment \"short-circuit local traffic\""
            ));
        }
        if has_external {
            rules.push(format!("goto {external_policy_chain}"));
        }
        out.chains.push(Chain {
            name: ext_chain.clone(),
            rules,
        });
    }

    let uses_fw_chain = !p.load_balancer_ips.is_empty() && !p.source_ranges.is_empty();
    if uses_fw_chain {
        let mut sources: Vec<String> = p.source_ranges.iter().map(|c| c.to_string()).collect();
        let primary = ctx.node_ips.first().copied();
        if primary.is_some_and(|ip| p.source_ranges.iter().any(|c| c.contains(ip))) {
            sources.extend(p.load_balancer_ips.iter().map(|ip| ip.to_string()));
        }
        out.chains.push(Chain {
            name: fw_chain.clone(),
            rules: vec![format!("ip saddr != {{ {} }} drop", sources.join(", "))],
        });
    }

    // The shared sets and maps.
    out.elements.push(elem(
        CLUSTER_IPS,
        p.cluster_ip.to_string(),
        String::new(),
        None,
    ));
    if has_internal {
        out.elements.push(elem(
            SERVICE_IPS,
            key(p.cluster_ip),
            format!("goto {internal_chain}"),
            None,
        ));
    } else {
        out.elements.push(elem(
            NO_ENDPOINT_SERVICES,
            key(p.cluster_ip),
            internal_verdict.clone(),
            Some(&name),
        ));
    }
    for ip in &p.external_ips {
        if has_endpoints {
            out.elements.push(elem(
                SERVICE_IPS,
                key(*ip),
                format!("goto {ext_chain}"),
                None,
            ));
        }
        if !has_external {
            out.elements.push(elem(
                NO_ENDPOINT_SERVICES,
                key(*ip),
                external_verdict.clone(),
                Some(&name),
            ));
        }
    }
    for ip in &p.load_balancer_ips {
        if has_endpoints {
            out.elements.push(elem(
                SERVICE_IPS,
                key(*ip),
                format!("goto {ext_chain}"),
                None,
            ));
        }
        if uses_fw_chain {
            out.elements.push(elem(
                FIREWALL_IPS,
                key(*ip),
                format!("goto {fw_chain}"),
                Some(&name),
            ));
        }
        if !has_external {
            out.elements.push(elem(
                NO_ENDPOINT_SERVICES,
                key(*ip),
                external_verdict.clone(),
                Some(&name),
            ));
        }
    }
    if let Some(np) = p.node_port {
        let np_key = format!("{proto} . {np}");
        if has_endpoints {
            out.elements.push(elem(
                SERVICE_NODEPORTS,
                np_key.clone(),
                format!("goto {ext_chain}"),
                None,
            ));
        }
        if !has_external {
            out.elements.push(elem(
                NO_ENDPOINT_NODEPORTS,
                np_key,
                external_verdict.clone(),
                Some(&name),
            ));
        }
    }

    if p.protocol == Protocol::Udp {
        let mut frontends = vec![(p.cluster_ip, p.port)];
        frontends.extend(p.external_ips.iter().map(|ip| (*ip, p.port)));
        frontends.extend(p.load_balancer_ips.iter().map(|ip| (*ip, p.port)));
        out.udp.push(UdpService {
            frontends,
            node_port: p.node_port,
            endpoints: cat.reachable.iter().map(|e| (e.addr, e.port)).collect(),
        });
    }
}

/// The fixed part of the table: base chains, jumps, the masquerade chains, the shared sets
/// and maps (declared empty) and the dispatch rules.
fn fixed(out: &mut String, ctx: &RenderContext) {
    let _ = writeln!(
        out,
        "add table {T} {{ comment \"rules for kube-proxy\" ; }}"
    );
    for (name, kind, hook, prio) in BASE_CHAINS {
        let _ = writeln!(
            out,
            "add chain {T} {name} {{ type {kind} hook {hook} priority {prio} ; }}"
        );
    }
    for c in [
        NODEPORT_ENDPOINTS_CHECK,
        SERVICE_ENDPOINTS_CHECK,
        FIREWALL_CHECK,
        SERVICES,
        MASQUERADING,
        CLUSTER_IPS_CHECK,
        MARK_MASQ,
        REJECT_CHAIN,
    ] {
        let _ = writeln!(out, "add chain {T} {c}");
    }
    for (to, from, extra) in JUMPS {
        let sep = if extra.is_empty() { "" } else { " " };
        let _ = writeln!(out, "add rule {T} {from} {extra}{sep}jump {to}");
    }
    let _ = writeln!(out, "add rule {T} {MARK_MASQ} mark set mark or {MASQ_MARK}");
    let _ = writeln!(
        out,
        "add rule {T} {MASQUERADING} mark and {MASQ_MARK} == 0 return"
    );
    let _ = writeln!(
        out,
        "add rule {T} {MASQUERADING} mark set mark xor {MASQ_MARK}"
    );
    let _ = writeln!(out, "add rule {T} {MASQUERADING} masquerade fully-random");
    let _ = writeln!(
        out,
        "add set {T} {CLUSTER_IPS} {{ type ipv4_addr ; comment \"Active ClusterIPs\" ; }}"
    );
    let _ = writeln!(
        out,
        "add rule {T} {CLUSTER_IPS_CHECK} ip daddr @{CLUSTER_IPS} reject comment \"Reject traffic to invalid ports of ClusterIPs\""
    );
    let _ = writeln!(
        out,
        "add set {T} {NODEPORT_IPS} {{ type ipv4_addr ; comment \"IPs that accept NodePort traffic\" ; }}"
    );
    let ips: Vec<String> = ctx
        .node_ips
        .iter()
        .filter(|ip| !ip.is_loopback())
        .map(|ip| ip.to_string())
        .collect();
    if !ips.is_empty() {
        let _ = writeln!(
            out,
            "add element {T} {NODEPORT_IPS} {{ {} }}",
            ips.join(" , ")
        );
    }
    let maps = [
        (
            NO_ENDPOINT_SERVICES,
            "ipv4_addr . inet_proto . inet_service",
            "vmap to drop or reject packets to services with no endpoints",
        ),
        (
            NO_ENDPOINT_NODEPORTS,
            "inet_proto . inet_service",
            "vmap to drop or reject packets to service nodeports with no endpoints",
        ),
        (
            FIREWALL_IPS,
            "ipv4_addr . inet_proto . inet_service",
            "destinations that are subject to LoadBalancerSourceRanges",
        ),
        (
            SERVICE_IPS,
            "ipv4_addr . inet_proto . inet_service",
            "ClusterIP, ExternalIP and LoadBalancer IP traffic",
        ),
        (
            SERVICE_NODEPORTS,
            "inet_proto . inet_service",
            "NodePort traffic",
        ),
    ];
    for (name, key, comment) in maps {
        let _ = writeln!(
            out,
            "add map {T} {name} {{ type {key} : verdict ; comment \"{comment}\" ; }}"
        );
    }
    let _ = writeln!(
        out,
        "add rule {T} {SERVICE_ENDPOINTS_CHECK} ip daddr . meta l4proto . th dport vmap @{NO_ENDPOINT_SERVICES}"
    );
    let _ = writeln!(
        out,
        "add rule {T} {NODEPORT_ENDPOINTS_CHECK} ip daddr @{NODEPORT_IPS} meta l4proto . th dport vmap @{NO_ENDPOINT_NODEPORTS}"
    );
    let _ = writeln!(
        out,
        "add rule {T} {FIREWALL_CHECK} ip daddr . meta l4proto . th dport vmap @{FIREWALL_IPS}"
    );
    let _ = writeln!(
        out,
        "add rule {T} {SERVICES} ip daddr . meta l4proto . th dport vmap @{SERVICE_IPS}"
    );
    let _ = writeln!(
        out,
        "add rule {T} {SERVICES} ip daddr @{NODEPORT_IPS} meta l4proto . th dport vmap @{SERVICE_NODEPORTS}"
    );
    let _ = writeln!(out, "add rule {T} {REJECT_CHAIN} reject");
}

/// Declares the sets and chains of `svc` (chains before any rule refers to them).
fn declare(out: &mut String, svc: &ServiceNft) {
    for (set, timeout) in &svc.affinity_sets {
        let _ = writeln!(
            out,
            "add set {T} {set} {{ type ipv4_addr ; flags dynamic,timeout ; timeout {timeout}s ; }}"
        );
    }
    for c in &svc.chains {
        let _ = writeln!(out, "add chain {T} {}", c.name);
    }
}

/// Writes the rules of `svc`'s chains (`flush`: empty them first).
fn fill(out: &mut String, svc: &ServiceNft, flush: bool) {
    for c in &svc.chains {
        if flush {
            let _ = writeln!(out, "flush chain {T} {}", c.name);
        }
        for r in &c.rules {
            let _ = writeln!(out, "add rule {T} {} {r}", c.name);
        }
    }
}

/// `add element` (with values) or `delete element` (keys only) commands for `elements`, one
/// per set, in set order.
fn elements<'a>(out: &mut String, add: bool, elements: impl IntoIterator<Item = &'a Element>) {
    let mut by_set: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for e in elements {
        let item = if add { e.render() } else { e.key.clone() };
        by_set.entry(e.set).or_default().push(item);
    }
    let op = if add { "add" } else { "delete" };
    for (set, items) in by_set {
        let _ = writeln!(out, "{op} element {T} {set} {{ {} }}", items.join(" , "));
    }
}

/// The full transaction: the table recreated with every service.
pub fn full(services: &BTreeMap<ServiceName, ServiceNft>, ctx: &RenderContext) -> String {
    let mut out = String::new();
    // `add` first, so that the `delete` finds a table to delete.
    let _ = writeln!(out, "add table {T}");
    let _ = writeln!(out, "delete table {T}");
    fixed(&mut out, ctx);
    for s in services.values() {
        declare(&mut out, s);
    }
    for s in services.values() {
        fill(&mut out, s, false);
    }
    elements(
        &mut out,
        true,
        services.values().flat_map(|s| s.elements.iter()),
    );
    out
}

/// One changed service: what the kernel holds (`old`) and what it should (`new`).
pub struct Change<'a> {
    pub old: Option<&'a ServiceNft>,
    pub new: Option<&'a ServiceNft>,
}

/// The partial transaction for `changes` (module docs); empty when nothing differs.
pub fn partial(changes: &[Change<'_>]) -> String {
    let mut out = String::new();
    for c in changes {
        if let Some(new) = c.new
            && c.old != c.new
        {
            declare(&mut out, new);
        }
    }
    for c in changes {
        if let Some(new) = c.new
            && c.old != c.new
        {
            fill(&mut out, new, true);
        }
    }
    let mut gone = Vec::new();
    let mut added = Vec::new();
    for c in changes {
        let old = c.old.map(ServiceNft::element_map).unwrap_or_default();
        let new = c.new.map(ServiceNft::element_map).unwrap_or_default();
        gone.extend(
            old.iter()
                .filter(|(k, e)| new.get(*k) != Some(*e))
                .map(|(_, e)| *e),
        );
        added.extend(
            new.iter()
                .filter(|(k, e)| old.get(*k) != Some(*e))
                .map(|(_, e)| *e),
        );
    }
    elements(&mut out, false, gone);
    elements(&mut out, true, added);
    // Chains and sets no service owns any more: flushed (so no stale chain refers to
    // another), then deleted.
    let mut stale_chains = Vec::new();
    let mut stale_sets = Vec::new();
    for c in changes {
        let Some(old) = c.old else { continue };
        let keep: BTreeSet<&str> = c
            .new
            .map(|n| n.chains.iter().map(|c| c.name.as_str()).collect())
            .unwrap_or_default();
        stale_chains.extend(
            old.chains
                .iter()
                .map(|c| c.name.as_str())
                .filter(|n| !keep.contains(n)),
        );
        let keep: BTreeSet<&str> = c
            .new
            .map(|n| n.affinity_sets.iter().map(|(s, _)| s.as_str()).collect())
            .unwrap_or_default();
        stale_sets.extend(
            old.affinity_sets
                .iter()
                .map(|(s, _)| s.as_str())
                .filter(|n| !keep.contains(n)),
        );
    }
    for c in &stale_chains {
        let _ = writeln!(out, "flush chain {T} {c}");
    }
    for c in &stale_chains {
        let _ = writeln!(out, "delete chain {T} {c}");
    }
    for s in &stale_sets {
        let _ = writeln!(out, "delete set {T} {s}");
    }
    out
}

/// Lines of a transaction that are rules, elements or chain operations (for the metrics).
pub fn commands(tx: &str) -> usize {
    tx.lines().filter(|l| !l.trim().is_empty()).count()
}
