//! The iptables mode's rules, as Kubernetes 1.33 kube-proxy writes them (pure).
//!
//! [`render_service`] turns one [`ServiceModel`] into its rules: the lines it adds to the
//! shared top-level chains (`KUBE-SERVICES`, `KUBE-NODEPORTS`, `KUBE-EXTERNAL-SERVICES`,
//! `KUBE-PROXY-FIREWALL`) and its own chains (`KUBE-SVC-*`, `KUBE-SVL-*`, `KUBE-EXT-*`,
//! `KUBE-FW-*`, `KUBE-SEP-*`) with their contents. [`restore_input`] assembles one
//! `iptables-restore --noflush` transaction from the rendered services: the top-level chains
//! are always rewritten whole (they are flushed by their declaration), a service's own chains
//! only when it is in the `write` set (a partial sync leaves the others untouched in the
//! kernel), and chains no longer wanted are flushed and deleted.
//!
//! Chain names are kube-proxy's: prefix + the first 16 characters of the base32 of
//! `sha256("ns/name:port" + "tcp" [+ "ip:port"])`.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::Ipv4Addr,
};

use crate::conntrack::UdpService;
use crate::mode::categorize::{
    categorize, ep_string, external_policy_local, externally_accessible,
};
use crate::model::{Endpoint, Ipv4Cidr, ServiceModel, ServiceName, ServicePort};

pub const KUBE_SERVICES: &str = "KUBE-SERVICES";
pub const KUBE_EXTERNAL_SERVICES: &str = "KUBE-EXTERNAL-SERVICES";
pub const KUBE_NODEPORTS: &str = "KUBE-NODEPORTS";
pub const KUBE_POSTROUTING: &str = "KUBE-POSTROUTING";
pub const KUBE_MARK_MASQ: &str = "KUBE-MARK-MASQ";
pub const KUBE_FORWARD: &str = "KUBE-FORWARD";
pub const KUBE_PROXY_FIREWALL: &str = "KUBE-PROXY-FIREWALL";
pub const KUBE_PROXY_CANARY: &str = "KUBE-PROXY-CANARY";

/// The masquerade mark (`--iptables-masquerade-bit` 14), formatted as kube-proxy formats it
/// (Go's `%#08x`); `iptables-save` prints it as `0x4000`.
pub const MASQ_MARK: &str = "0x00004000";

/// Prefixes of the per-service chains (all in the nat table).
pub const SERVICE_CHAIN_PREFIXES: [&str; 5] = [
    "KUBE-SVC-",
    "KUBE-SVL-",
    "KUBE-EXT-",
    "KUBE-FW-",
    "KUBE-SEP-",
];

/// kube-proxy's threshold of endpoints above which rule comments that would be repeated per
/// endpoint are left out ("large cluster mode").
pub const LARGE_CLUSTER_ENDPOINTS: usize = 1000;

/// The top-level chains of a table, declared (and so flushed) by every transaction.
pub const NAT_TOP_CHAINS: [&str; 4] = [
    KUBE_SERVICES,
    KUBE_NODEPORTS,
    KUBE_POSTROUTING,
    KUBE_MARK_MASQ,
];
pub const FILTER_TOP_CHAINS: [&str; 5] = [
    KUBE_SERVICES,
    KUBE_EXTERNAL_SERVICES,
    KUBE_FORWARD,
    KUBE_NODEPORTS,
    KUBE_PROXY_FIREWALL,
];

/// A rule kube-proxy inserts at the top of a built-in chain (once, checked before inserting).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JumpRule {
    pub table: &'static str,
    /// The built-in chain.
    pub from: &'static str,
    /// Our chain.
    pub to: &'static str,
    pub comment: &'static str,
    /// Matches before the comment (`-m conntrack --ctstate NEW`).
    pub extra: &'static str,
}

impl JumpRule {
    /// The rule's arguments after `-A/-I/-D <chain>`, as `iptables-save` prints them.
    pub fn spec(&self) -> String {
        let extra = if self.extra.is_empty() {
            String::new()
        } else {
            format!("{} ", self.extra)
        };
        format!(
            "{extra}-m comment --comment \"{}\" -j {}",
            self.comment, self.to
        )
    }
}

const NEW: &str = "-m conntrack --ctstate NEW";

/// The jumps from the built-in chains, in kube-proxy's order.
pub const JUMP_RULES: [JumpRule; 12] = [
    jump(
        "filter",
        "INPUT",
        KUBE_EXTERNAL_SERVICES,
        "kubernetes externally-visible service portals",
        NEW,
    ),
    jump(
        "filter",
        "FORWARD",
        KUBE_EXTERNAL_SERVICES,
        "kubernetes externally-visible service portals",
        NEW,
    ),
    jump(
        "filter",
        "INPUT",
        KUBE_NODEPORTS,
        "kubernetes health check service ports",
        "",
    ),
    jump(
        "filter",
        "FORWARD",
        KUBE_SERVICES,
        "kubernetes service portals",
        NEW,
    ),
    jump(
        "filter",
        "OUTPUT",
        KUBE_SERVICES,
        "kubernetes service portals",
        NEW,
    ),
    jump(
        "filter",
        "FORWARD",
        KUBE_FORWARD,
        "kubernetes forwarding rules",
        "",
    ),
    jump(
        "filter",
        "INPUT",
        KUBE_PROXY_FIREWALL,
        "kubernetes load balancer firewall",
        NEW,
    ),
    jump(
        "filter",
        "OUTPUT",
        KUBE_PROXY_FIREWALL,
        "kubernetes load balancer firewall",
        NEW,
    ),
    jump(
        "filter",
        "FORWARD",
        KUBE_PROXY_FIREWALL,
        "kubernetes load balancer firewall",
        NEW,
    ),
    jump(
        "nat",
        "OUTPUT",
        KUBE_SERVICES,
        "kubernetes service portals",
        "",
    ),
    jump(
        "nat",
        "PREROUTING",
        KUBE_SERVICES,
        "kubernetes service portals",
        "",
    ),
    jump(
        "nat",
        "POSTROUTING",
        KUBE_POSTROUTING,
        "kubernetes postrouting rules",
        "",
    ),
];

const fn jump(
    table: &'static str,
    from: &'static str,
    to: &'static str,
    comment: &'static str,
    extra: &'static str,
) -> JumpRule {
    JumpRule {
        table,
        from,
        to,
        comment,
        extra,
    }
}

/// Whether `name` is one of this mode's chains (top-level, per-service or the canary).
pub fn is_our_chain(name: &str) -> bool {
    SERVICE_CHAIN_PREFIXES.iter().any(|p| name.starts_with(p))
        || NAT_TOP_CHAINS.contains(&name)
        || FILTER_TOP_CHAINS.contains(&name)
        || name == KUBE_PROXY_CANARY
}

fn hash16(input: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, input.as_bytes());
    let mut s = data_encoding::BASE32.encode(digest.as_ref());
    s.truncate(16);
    s
}

/// A service port's chain: `prefix` + hash of `"ns/name:port" + "tcp"`.
pub fn port_chain(prefix: &str, port_name: &str, protocol: &str) -> String {
    format!("{prefix}{}", hash16(&format!("{port_name}{protocol}")))
}

/// An endpoint's chain: `KUBE-SEP-` + hash of `"ns/name:port" + "tcp" + "ip:port"`.
pub fn endpoint_chain(port_name: &str, protocol: &str, endpoint: &str) -> String {
    format!(
        "KUBE-SEP-{}",
        hash16(&format!("{port_name}{protocol}{endpoint}"))
    )
}

/// What rendering needs to know about the node and the flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenderContext {
    pub node_name: String,
    /// The node's primary address (loadBalancerSourceRanges that contain it allow the node).
    pub node_ip: Ipv4Addr,
    pub pod_cidr: Option<Ipv4Cidr>,
    /// `--cluster-cidr`: the local-traffic detector (`! -s <cidr>` marks off-cluster clients).
    pub cluster_cidr: Ipv4Cidr,
    /// `--masquerade-all`.
    pub masquerade_all: bool,
    /// More than [`LARGE_CLUSTER_ENDPOINTS`] endpoints: per-endpoint comments left out.
    pub large_cluster: bool,
}

/// The rules of one service port.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortRules {
    /// `-A KUBE-SERVICES ...` / `-A KUBE-NODEPORTS ...` lines of the nat table.
    pub nat_top: Vec<String>,
    /// Lines of the filter table's top-level chains.
    pub filter: Vec<String>,
    /// The port's own nat chains, in declaration order.
    pub chains: Vec<String>,
    /// `-A <own chain> ...` lines.
    pub chain_rules: Vec<String>,
    /// UDP frontends and the endpoints serving them, for the conntrack cleanup.
    pub udp: Option<UdpService>,
}

/// The rules of one Service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceRules {
    pub ports: Vec<PortRules>,
}

impl ServiceRules {
    pub fn chains(&self) -> impl Iterator<Item = &String> {
        self.ports.iter().flat_map(|p| p.chains.iter())
    }

    /// Rules this service contributes to (nat, filter).
    pub fn rule_counts(&self) -> (usize, usize) {
        self.ports.iter().fold((0, 0), |(n, f), p| {
            (
                n + p.nat_top.len() + p.chain_rules.len(),
                f + p.filter.len(),
            )
        })
    }
}

/// Builds a rule line from arguments.
struct Line(String);

impl Line {
    fn new(op_chain: &str) -> Self {
        Self(format!("-A {op_chain}"))
    }
    fn arg(mut self, a: impl std::fmt::Display) -> Self {
        let _ = write!(self.0, " {a}");
        self
    }
    fn comment(self, c: &str) -> Self {
        self.arg("-m comment --comment").arg(c)
    }
    fn proto(self, proto: &str) -> Self {
        self.arg(format_args!("-m {proto} -p {proto}"))
    }
    fn done(self) -> String {
        self.0
    }
}

fn quoted(s: impl std::fmt::Display) -> String {
    format!("\"{s}\"")
}

/// kube-proxy's probability of the `n`-th last endpoint: `1/n` with ten decimals.
pub fn probability(n: usize) -> String {
    format!("{:.10}", 1.0 / n as f64)
}

/// The rules of one Service (module docs).
pub fn render_service(svc: &ServiceModel, ctx: &RenderContext) -> ServiceRules {
    ServiceRules {
        ports: svc
            .ports
            .iter()
            .map(|p| render_port(&svc.name, p, ctx))
            .collect(),
    }
}

fn render_port(svc: &ServiceName, p: &ServicePort, ctx: &RenderContext) -> PortRules {
    let mut out = PortRules::default();
    let proto = p.protocol.lower();
    let name = p.display_name(svc);
    let cat = categorize(p, &ctx.node_name, ctx.pod_cidr);
    let has_endpoints = cat.has_any;

    let cluster_chain = port_chain("KUBE-SVC-", &name, proto);
    let local_chain = port_chain("KUBE-SVL-", &name, proto);
    let ext_chain = port_chain("KUBE-EXT-", &name, proto);
    let fw_chain = port_chain("KUBE-FW-", &name, proto);
    let uses_cluster_chain = !cat.cluster.is_empty();
    let uses_local_chain = !cat.local.is_empty();

    let (internal_chain, has_internal) = cat.policy(p, false, &local_chain, &cluster_chain);
    let (external_policy_chain, has_external) = cat.policy(p, true, &local_chain, &cluster_chain);
    let uses_ext_chain = has_endpoints && externally_accessible(p);
    let uses_fw_chain =
        has_endpoints && !p.load_balancer_ips.is_empty() && !p.source_ranges.is_empty();
    let lb_chain = if uses_fw_chain { &fw_chain } else { &ext_chain };

    let no_endpoints = quoted(format_args!("{name} has no endpoints"));
    let no_local = quoted(format_args!("{name} has no local endpoints"));
    // What the filter table does with traffic no chain takes: REJECT without any endpoint,
    // DROP without a local one (the rules are only written on the side that lacks them).
    let (filter_target, filter_comment) = if !has_endpoints {
        ("REJECT", &no_endpoints)
    } else {
        ("DROP", &no_local)
    };
    // `-A <chain> -m comment --comment <c> -m <p> -p <p> -d <ip> --dport <port> -j <target>`
    let to_frontend = |chain: &str, comment: &str, ip: Ipv4Addr, target: &str| {
        Line::new(chain)
            .comment(comment)
            .proto(proto)
            .arg(format_args!("-d {ip} --dport {} -j {target}", p.port))
            .done()
    };

    // The cluster IP.
    let cluster_ip_comment = quoted(format_args!("{name} cluster IP"));
    if has_internal {
        out.nat_top.push(to_frontend(
            KUBE_SERVICES,
            &cluster_ip_comment,
            p.cluster_ip,
            internal_chain,
        ));
    } else {
        out.filter.push(to_frontend(
            KUBE_SERVICES,
            filter_comment,
            p.cluster_ip,
            filter_target,
        ));
    }

    // External IPs.
    let external_ip_comment = quoted(format_args!("{name} external IP"));
    for ip in &p.external_ips {
        if has_endpoints {
            out.nat_top.push(to_frontend(
                KUBE_SERVICES,
                &external_ip_comment,
                *ip,
                &ext_chain,
            ));
        }
        if !has_external {
            out.filter.push(to_frontend(
                KUBE_EXTERNAL_SERVICES,
                filter_comment,
                *ip,
                filter_target,
            ));
        }
    }

    // LoadBalancer ingress IPs.
    let lb_comment = quoted(format_args!("{name} loadbalancer IP"));
    let not_accepted = quoted(format_args!("{name} traffic not accepted by {fw_chain}"));
    for ip in &p.load_balancer_ips {
        if has_endpoints {
            out.nat_top
                .push(to_frontend(KUBE_SERVICES, &lb_comment, *ip, lb_chain));
        }
        if uses_fw_chain {
            out.filter
                .push(to_frontend(KUBE_PROXY_FIREWALL, &not_accepted, *ip, "DROP"));
        }
    }
    if !has_external {
        for ip in &p.load_balancer_ips {
            out.filter.push(to_frontend(
                KUBE_EXTERNAL_SERVICES,
                filter_comment,
                *ip,
                filter_target,
            ));
        }
    }

    // The node port.
    if let Some(np) = p.node_port {
        if has_endpoints {
            out.nat_top.push(
                Line::new(KUBE_NODEPORTS)
                    .comment(&name)
                    .proto(proto)
                    .arg(format_args!("--dport {np} -j {ext_chain}"))
                    .done(),
            );
        }
        if !has_external {
            out.filter.push(
                Line::new(KUBE_EXTERNAL_SERVICES)
                    .comment(filter_comment)
                    .arg("-m addrtype --dst-type LOCAL")
                    .proto(proto)
                    .arg(format_args!("--dport {np} -j {filter_target}"))
                    .done(),
            );
        }
    }

    // The health check node port is accepted whether or not there are local endpoints.
    if let Some(hc) = p.health_check_node_port {
        out.filter.push(
            Line::new(KUBE_NODEPORTS)
                .comment(&quoted(format_args!("{name} health check node port")))
                .proto("tcp")
                .arg(format_args!("--dport {hc} -j ACCEPT"))
                .done(),
        );
    }

    // The service's own chains.
    if has_internal {
        // Off-cluster clients of the cluster IP are masqueraded (all with --masquerade-all).
        let mut l = Line::new(internal_chain)
            .comment(&cluster_ip_comment)
            .proto(proto)
            .arg(format_args!("-d {} --dport {}", p.cluster_ip, p.port));
        if !ctx.masquerade_all {
            l = l.arg(format_args!("! -s {}", ctx.cluster_cidr));
        }
        out.chain_rules
            .push(l.arg(format_args!("-j {KUBE_MARK_MASQ}")).done());
    }

    if uses_ext_chain {
        out.chains.push(ext_chain.clone());
        if !external_policy_local(p) {
            out.chain_rules.push(
                Line::new(&ext_chain)
                    .comment(&quoted(format_args!(
                        "masquerade traffic for {name} external destinations"
                    )))
                    .arg(format_args!("-j {KUBE_MARK_MASQ}"))
                    .done(),
            );
        } else {
            out.chain_rules.push(
                Line::new(&ext_chain)
                    .comment(&quoted(format_args!(
                        "pod traffic for {name} external destinations"
                    )))
                    .arg(format_args!("-s {} -j {cluster_chain}", ctx.cluster_cidr))
                    .done(),
            );
            out.chain_rules.push(
                Line::new(&ext_chain)
                    .comment(&quoted(format_args!(
                        "masquerade LOCAL traffic for {name} external destinations"
                    )))
                    .arg(format_args!(
                        "-m addrtype --src-type LOCAL -j {KUBE_MARK_MASQ}"
                    ))
                    .done(),
            );
            out.chain_rules.push(
                Line::new(&ext_chain)
                    .comment(&quoted(format_args!(
                        "route LOCAL traffic for {name} external destinations"
                    )))
                    .arg(format_args!(
                        "-m addrtype --src-type LOCAL -j {cluster_chain}"
                    ))
                    .done(),
            );
        }
        if has_external {
            out.chain_rules.push(
                Line::new(&ext_chain)
                    .arg(format_args!("-j {external_policy_chain}"))
                    .done(),
            );
        }
    }

    if uses_fw_chain {
        out.chains.push(fw_chain.clone());
        let mut allow_from_node = false;
        for cidr in &p.source_ranges {
            out.chain_rules.push(
                Line::new(&fw_chain)
                    .comment(&lb_comment)
                    .arg(format_args!("-s {cidr} -j {ext_chain}"))
                    .done(),
            );
            allow_from_node |= cidr.contains(ctx.node_ip);
        }
        if allow_from_node {
            for ip in &p.load_balancer_ips {
                out.chain_rules.push(
                    Line::new(&fw_chain)
                        .comment(&lb_comment)
                        .arg(format_args!("-s {ip} -j {ext_chain}"))
                        .done(),
                );
            }
        }
        out.chain_rules.push(
            Line::new(&fw_chain)
                .comment(&quoted(format_args!(
                    "other traffic to {name} will be dropped by KUBE-PROXY-FIREWALL"
                )))
                .done(),
        );
    }

    let sep = |e: &Endpoint| endpoint_chain(&name, proto, &ep_string(e));
    let endpoint_comment = |l: Line, c: &str| {
        if ctx.large_cluster { l } else { l.comment(c) }
    };
    let to_endpoints = |chain: &str, eps: &[&Endpoint], out: &mut PortRules| {
        out.chains.push(chain.to_owned());
        if let Some(t) = p.affinity_timeout {
            for e in eps {
                let c = quoted(format_args!("{name} -> {}", ep_string(e)));
                let target = sep(e);
                out.chain_rules.push(
                    endpoint_comment(Line::new(chain), &c)
                        .arg(format_args!(
                            "-m recent --name {target} --rcheck --seconds {t} --reap -j {target}"
                        ))
                        .done(),
                );
            }
        }
        let n = eps.len();
        for (i, e) in eps.iter().enumerate() {
            let c = quoted(format_args!("{name} -> {}", ep_string(e)));
            let mut l = endpoint_comment(Line::new(chain), &c);
            if i + 1 < n {
                l = l.arg(format_args!(
                    "-m statistic --mode random --probability {}",
                    probability(n - i)
                ));
            }
            out.chain_rules
                .push(l.arg(format_args!("-j {}", sep(e))).done());
        }
    };
    if uses_cluster_chain {
        to_endpoints(&cluster_chain, &cat.cluster, &mut out);
    }
    if uses_local_chain {
        to_endpoints(&local_chain, &cat.local, &mut out);
    }

    for e in &cat.reachable {
        let chain = sep(e);
        out.chains.push(chain.clone());
        out.chain_rules.push(
            endpoint_comment(Line::new(&chain), &name)
                .arg(format_args!("-s {} -j {KUBE_MARK_MASQ}", e.addr))
                .done(),
        );
        let mut l = endpoint_comment(Line::new(&chain), &name);
        if p.affinity_timeout.is_some() {
            l = l.arg(format_args!("-m recent --name {chain} --set"));
        }
        out.chain_rules.push(
            l.proto(proto)
                .arg(format_args!("-j DNAT --to-destination {}", ep_string(e)))
                .done(),
        );
    }

    if p.protocol == crate::model::Protocol::Udp {
        let mut frontends = vec![(p.cluster_ip, p.port)];
        frontends.extend(p.external_ips.iter().map(|ip| (*ip, p.port)));
        frontends.extend(p.load_balancer_ips.iter().map(|ip| (*ip, p.port)));
        out.udp = Some(UdpService {
            frontends,
            node_port: p.node_port,
            // As kube-proxy's reconciler: every serving endpoint keeps its flows.
            endpoints: p
                .endpoints
                .iter()
                .filter(|e| e.serving)
                .map(|e| (e.addr, e.port))
                .collect(),
        });
    }
    out
}

/// The rules every transaction writes besides the services' (the top-level chains' fixed
/// rules).
fn fixed_filter_rules(out: &mut String) {
    let _ = writeln!(
        out,
        "-A {KUBE_FORWARD} -m conntrack --ctstate INVALID -j DROP\n\
         -A {KUBE_FORWARD} -m comment --comment \"kubernetes forwarding rules\" -m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT\n\
         -A {KUBE_FORWARD} -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
    );
}

fn fixed_nat_rules(out: &mut String) {
    let _ = writeln!(
        out,
        "-A {KUBE_POSTROUTING} -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN\n\
         -A {KUBE_POSTROUTING} -j MARK --xor-mark {MASQ_MARK}\n\
         -A {KUBE_POSTROUTING} -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n\
         -A {KUBE_MARK_MASQ} -j MARK --or-mark {MASQ_MARK}"
    );
}

/// The last rule of nat `KUBE-SERVICES`: node ports on every local address but loopback
/// (kube-proxy with `--iptables-localhost-nodeports=false`: no `route_localnet`).
pub const NODEPORTS_JUMP: &str = "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL ! -d 127.0.0.0/8 -j KUBE-NODEPORTS";

/// What a full sync adds to a transaction: the canary chains and the jumps from built-in
/// chains found missing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FullSyncExtras {
    pub canary: bool,
    /// Jumps to insert (they go in after the table's chain declarations).
    pub jumps: Vec<JumpRule>,
}

/// One `iptables-restore --noflush` transaction (module docs): every service's top-level
/// rules, the own chains of the services in `write` (all of them when `None`), and `stale`
/// chains flushed and deleted; plus the `extras` of a full sync.
pub fn restore_input(
    services: &BTreeMap<ServiceName, ServiceRules>,
    write: Option<&BTreeSet<ServiceName>>,
    stale: &BTreeSet<String>,
    extras: &FullSyncExtras,
) -> String {
    let mut out = String::with_capacity(256 + services.len() * 1024);
    let wanted = |n: &ServiceName| write.is_none_or(|w| w.contains(n));
    let table_extras = |out: &mut String, table: &str| {
        for j in extras.jumps.iter().filter(|j| j.table == table) {
            let _ = writeln!(out, "-I {} 1 {}", j.from, j.spec());
        }
    };
    let canary = |out: &mut String| {
        if extras.canary {
            let _ = writeln!(out, ":{KUBE_PROXY_CANARY} - [0:0]");
        }
    };

    if extras.canary {
        out.push_str("*mangle\n");
        canary(&mut out);
        out.push_str("COMMIT\n");
    }
    out.push_str("*filter\n");
    for c in FILTER_TOP_CHAINS {
        let _ = writeln!(out, ":{c} - [0:0]");
    }
    canary(&mut out);
    table_extras(&mut out, "filter");
    fixed_filter_rules(&mut out);
    for rules in services.values() {
        for p in &rules.ports {
            for l in &p.filter {
                out.push_str(l);
                out.push('\n');
            }
        }
    }
    out.push_str("COMMIT\n*nat\n");
    for c in NAT_TOP_CHAINS {
        let _ = writeln!(out, ":{c} - [0:0]");
    }
    canary(&mut out);
    for (n, rules) in services {
        if wanted(n) {
            for c in rules.chains() {
                let _ = writeln!(out, ":{c} - [0:0]");
            }
        }
    }
    for c in stale {
        let _ = writeln!(out, ":{c} - [0:0]");
    }
    table_extras(&mut out, "nat");
    fixed_nat_rules(&mut out);
    for rules in services.values() {
        for p in &rules.ports {
            for l in &p.nat_top {
                out.push_str(l);
                out.push('\n');
            }
        }
    }
    for (n, rules) in services {
        if wanted(n) {
            for p in &rules.ports {
                for l in &p.chain_rules {
                    out.push_str(l);
                    out.push('\n');
                }
            }
        }
    }
    for c in stale {
        let _ = writeln!(out, "-X {c}");
    }
    out.push_str(NODEPORTS_JUMP);
    out.push_str("\nCOMMIT\n");
    out
}
