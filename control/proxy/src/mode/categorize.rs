//! Which endpoints a service port uses, as kube-proxy's `CategorizeEndpoints` picks them
//! (shared by the modes that render kube-proxy's rules: iptables, nftables).

use crate::model::{Endpoint, Ipv4Cidr, ServicePort, TrafficPolicy};

/// The endpoints a service port uses, as kube-proxy's `CategorizeEndpoints` picks them.
pub struct Categorized<'a> {
    pub cluster: Vec<&'a Endpoint>,
    pub local: Vec<&'a Endpoint>,
    /// Cluster and local ones, each once (their KUBE-SEP chains).
    pub reachable: Vec<&'a Endpoint>,
    pub has_any: bool,
}

pub fn externally_accessible(p: &ServicePort) -> bool {
    p.node_port.is_some() || !p.external_ips.is_empty() || !p.load_balancer_ips.is_empty()
}

pub fn external_policy_local(p: &ServicePort) -> bool {
    externally_accessible(p) && p.external_policy == TrafficPolicy::Local
}

pub fn internal_policy_local(p: &ServicePort) -> bool {
    p.internal_policy == TrafficPolicy::Local
}

pub fn categorize<'a>(
    p: &'a ServicePort,
    node_name: &str,
    pod_cidr: Option<Ipv4Cidr>,
) -> Categorized<'a> {
    // Ready endpoints; when there are none, serving terminating ones.
    let usable = |eps: &[&'a Endpoint]| -> Vec<&'a Endpoint> {
        if eps.iter().any(|e| e.ready) {
            eps.iter().copied().filter(|e| e.ready).collect()
        } else {
            eps.iter()
                .copied()
                .filter(|e| e.serving && e.terminating)
                .collect()
        }
    };
    let all: Vec<&Endpoint> = p.endpoints.iter().collect();
    let cluster_usable = usable(&all);
    let has_any = !cluster_usable.is_empty();
    let uses_cluster = !internal_policy_local(p) || externally_accessible(p);
    let uses_local = internal_policy_local(p) || external_policy_local(p);
    let cluster = if uses_cluster {
        cluster_usable
    } else {
        Vec::new()
    };
    let local = if uses_local {
        let locals: Vec<&Endpoint> = all
            .iter()
            .copied()
            .filter(|e| e.is_local(node_name, pod_cidr))
            .collect();
        usable(&locals)
    } else {
        Vec::new()
    };
    let mut reachable: Vec<&Endpoint> = cluster.clone();
    for e in &local {
        if !reachable.contains(e) {
            reachable.push(e);
        }
    }
    // kube-proxy orders endpoints by their "ip:port" string.
    let by_string = |v: &mut Vec<&Endpoint>| v.sort_by_cached_key(|e| ep_string(e));
    let (mut cluster, mut local) = (cluster, local);
    by_string(&mut cluster);
    by_string(&mut local);
    by_string(&mut reachable);
    Categorized {
        cluster,
        local,
        reachable,
        has_any,
    }
}

pub fn ep_string(e: &Endpoint) -> String {
    format!("{}:{}", e.addr, e.port)
}

impl Categorized<'_> {
    /// The policy chain internal (`local`: ClusterIP) or external traffic of `p` goes to —
    /// `local` or `cluster` — and whether that chain has endpoints.
    pub fn policy<'c>(
        &self,
        p: &ServicePort,
        external: bool,
        local: &'c str,
        cluster: &'c str,
    ) -> (&'c str, bool) {
        let uses_local = if external {
            external_policy_local(p)
        } else {
            internal_policy_local(p)
        };
        if uses_local {
            (local, self.has_any && !self.local.is_empty())
        } else {
            (cluster, self.has_any)
        }
    }
}
