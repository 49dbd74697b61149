//! The userspace mode's iptables rules, as kube-proxy's userspace proxier wrote them (seed 003
//! lines 76-110; `pkg/proxy/userspace/proxier.go`, removed in 1.26), in the form
//! `iptables-save` prints them:
//!
//! - nat `KUBE-PORTALS-CONTAINER` (from PREROUTING): traffic arriving for a service address
//!   (ClusterIP, externalIPs, LoadBalancer IPs) `-j REDIRECT --to-ports <proxy port>`;
//! - nat `KUBE-PORTALS-HOST` (from OUTPUT): the node's own traffic for them
//!   `-j DNAT --to-destination <node IP>:<proxy port>`;
//! - nat `KUBE-NODEPORT-CONTAINER` / `KUBE-NODEPORT-HOST`: the same for NodePorts on the
//!   node's addresses (the jumps match `-m addrtype --dst-type LOCAL`);
//! - filter `KUBE-NODEPORT-NON-LOCAL` (from INPUT): accepts the proxy ports NodePort traffic
//!   is redirected to.
//!
//! Every sync rewrites the five chains whole with one `iptables-restore --noflush` input
//! ([`restore_input`]): declaring a chain flushes it. Pure.

use std::{fmt::Write as _, net::Ipv4Addr};

use crate::model::Protocol;

pub const KUBE_PORTALS_CONTAINER: &str = "KUBE-PORTALS-CONTAINER";
pub const KUBE_PORTALS_HOST: &str = "KUBE-PORTALS-HOST";
pub const KUBE_NODEPORT_CONTAINER: &str = "KUBE-NODEPORT-CONTAINER";
pub const KUBE_NODEPORT_HOST: &str = "KUBE-NODEPORT-HOST";
pub const KUBE_NODEPORT_NON_LOCAL: &str = "KUBE-NODEPORT-NON-LOCAL";

/// The nat chains of this mode.
pub const NAT_CHAINS: [&str; 4] = [
    KUBE_PORTALS_CONTAINER,
    KUBE_PORTALS_HOST,
    KUBE_NODEPORT_CONTAINER,
    KUBE_NODEPORT_HOST,
];
/// The filter chains of this mode.
pub const FILTER_CHAINS: [&str; 1] = [KUBE_NODEPORT_NON_LOCAL];

/// Whether `chain` is one of this mode's.
pub fn is_our_chain(chain: &str) -> bool {
    NAT_CHAINS.contains(&chain) || FILTER_CHAINS.contains(&chain)
}

const PORTALS_COMMENT: &str = "handle ClusterIPs; NOTE: this must be before the NodePort rules";
const NODEPORTS_COMMENT: &str =
    "handle service NodePorts; NOTE: this must be the last rule in the chain";
const NON_LOCAL_COMMENT: &str = "Ensure that non-local NodePort traffic can flow";

/// A jump from a built-in chain to one of ours (`table`, built-in chain, arguments after
/// `-A <chain>` as `iptables-save` prints them).
pub struct Jump {
    pub table: &'static str,
    pub from: &'static str,
    pub spec: String,
}

/// The jumps from the built-in chains, in kube-proxy's order: in PREROUTING and OUTPUT the
/// portal chain comes before the NodePort chain.
pub fn jumps() -> Vec<Jump> {
    let portals = |to: &str| format!("-m comment --comment \"{PORTALS_COMMENT}\" -j {to}");
    let nodeports = |to: &str| {
        format!("-m addrtype --dst-type LOCAL -m comment --comment \"{NODEPORTS_COMMENT}\" -j {to}")
    };
    vec![
        Jump {
            table: "nat",
            from: "PREROUTING",
            spec: portals(KUBE_PORTALS_CONTAINER),
        },
        Jump {
            table: "nat",
            from: "PREROUTING",
            spec: nodeports(KUBE_NODEPORT_CONTAINER),
        },
        Jump {
            table: "nat",
            from: "OUTPUT",
            spec: portals(KUBE_PORTALS_HOST),
        },
        Jump {
            table: "nat",
            from: "OUTPUT",
            spec: nodeports(KUBE_NODEPORT_HOST),
        },
        Jump {
            table: "filter",
            from: "INPUT",
            spec: format!(
                "-m comment --comment \"{NON_LOCAL_COMMENT}\" -j {KUBE_NODEPORT_NON_LOCAL}"
            ),
        },
    ]
}

/// One proxied service port: where its traffic goes to (the proxy's listening port).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Portal {
    /// `ns/name:port` (kube-proxy's service port name; the port name may be empty).
    pub name: String,
    pub protocol: Protocol,
    /// The service port.
    pub port: u16,
    /// ClusterIP, externalIPs and LoadBalancer IPs.
    pub addrs: Vec<Ipv4Addr>,
    pub node_port: Option<u16>,
    /// The proxy's listening port for this service port.
    pub proxy_port: u16,
}

/// The `iptables-restore --noflush` input writing the five chains for `portals` on the node
/// whose primary address is `node_ip`, and `missing_jumps` (from [`jumps`], those a
/// previous `iptables-save` did not show).
pub fn restore_input(portals: &[Portal], node_ip: Ipv4Addr, missing_jumps: &[&Jump]) -> String {
    let mut nat = String::new();
    let mut filter = String::new();
    for p in portals {
        let proto = p.protocol.lower();
        let m = format!("-p {proto} -m comment --comment \"{}\" -m {proto}", p.name);
        for a in &p.addrs {
            let _ = writeln!(
                nat,
                "-A {KUBE_PORTALS_CONTAINER} -d {a}/32 {m} --dport {} -j REDIRECT --to-ports {}",
                p.port, p.proxy_port
            );
            let _ = writeln!(
                nat,
                "-A {KUBE_PORTALS_HOST} -d {a}/32 {m} --dport {} -j DNAT --to-destination {node_ip}:{}",
                p.port, p.proxy_port
            );
        }
        if let Some(np) = p.node_port {
            let _ = writeln!(
                nat,
                "-A {KUBE_NODEPORT_CONTAINER} {m} --dport {np} -j REDIRECT --to-ports {}",
                p.proxy_port
            );
            let _ = writeln!(
                nat,
                "-A {KUBE_NODEPORT_HOST} {m} --dport {np} -j DNAT --to-destination {node_ip}:{}",
                p.proxy_port
            );
            let _ = writeln!(
                filter,
                "-A {KUBE_NODEPORT_NON_LOCAL} {m} --dport {} -j ACCEPT",
                p.proxy_port
            );
        }
    }
    let mut out = String::from("*nat\n");
    for c in NAT_CHAINS {
        let _ = writeln!(out, ":{c} - [0:0]");
    }
    for j in missing_jumps.iter().filter(|j| j.table == "nat") {
        let _ = writeln!(out, "-A {} {}", j.from, j.spec);
    }
    out.push_str(&nat);
    out.push_str("COMMIT\n*filter\n");
    for c in FILTER_CHAINS {
        let _ = writeln!(out, ":{c} - [0:0]");
    }
    for j in missing_jumps.iter().filter(|j| j.table == "filter") {
        let _ = writeln!(out, "-A {} {}", j.from, j.spec);
    }
    out.push_str(&filter);
    out.push_str("COMMIT\n");
    out
}

/// The jumps of [`jumps`] that `save` (an `iptables-save` of both tables) lacks.
pub fn missing_jumps<'a>(save: &str, all: &'a [Jump]) -> Vec<&'a Jump> {
    let tables = super::super::iptables::exec::tables(save);
    all.iter()
        .filter(|j| {
            let want = format!("-A {} {}", j.from, j.spec);
            !tables
                .iter()
                .any(|(t, body)| *t == j.table && body.lines().any(|l| l == want))
        })
        .collect()
}

/// The restore input removing this mode's chains and jumps from `save`; empty when there are
/// none.
pub fn cleanup_input(save: &str) -> String {
    let all = jumps();
    let mut out = String::new();
    for (table, body) in super::super::iptables::exec::tables(save) {
        let ours: Vec<&str> = super::super::iptables::exec::declared_chains(&body)
            .filter(|c| is_our_chain(c))
            .collect();
        let ours_jumps: Vec<&Jump> = all
            .iter()
            .filter(|j| {
                j.table == table
                    && body
                        .lines()
                        .any(|l| l == format!("-A {} {}", j.from, j.spec))
            })
            .collect();
        if ours.is_empty() && ours_jumps.is_empty() {
            continue;
        }
        let _ = writeln!(out, "*{table}");
        for c in &ours {
            let _ = writeln!(out, ":{c} - [0:0]");
        }
        for j in ours_jumps {
            let _ = writeln!(out, "-D {} {}", j.from, j.spec);
        }
        for c in &ours {
            let _ = writeln!(out, "-X {c}");
        }
        out.push_str("COMMIT\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web() -> Portal {
        Portal {
            name: "default/web:http".into(),
            protocol: Protocol::Tcp,
            port: 80,
            addrs: vec![Ipv4Addr::new(10, 96, 0, 10), Ipv4Addr::new(198, 18, 5, 1)],
            node_port: Some(30080),
            proxy_port: 41000,
        }
    }

    #[test]
    fn portals_and_node_ports_are_written_as_the_seeds_show_them() {
        let dns = Portal {
            name: "kube-system/dns:dns".into(),
            protocol: Protocol::Udp,
            port: 53,
            addrs: vec![Ipv4Addr::new(10, 96, 0, 53)],
            node_port: None,
            proxy_port: 41001,
        };
        let input = restore_input(&[web(), dns], Ipv4Addr::new(198, 18, 0, 11), &[]);
        let want = "\
*nat
:KUBE-PORTALS-CONTAINER - [0:0]
:KUBE-PORTALS-HOST - [0:0]
:KUBE-NODEPORT-CONTAINER - [0:0]
:KUBE-NODEPORT-HOST - [0:0]
-A KUBE-PORTALS-CONTAINER -d 10.96.0.10/32 -p tcp -m comment --comment \"default/web:http\" -m tcp --dport 80 -j REDIRECT --to-ports 41000
-A KUBE-PORTALS-HOST -d 10.96.0.10/32 -p tcp -m comment --comment \"default/web:http\" -m tcp --dport 80 -j DNAT --to-destination 198.18.0.11:41000
-A KUBE-PORTALS-CONTAINER -d 198.18.5.1/32 -p tcp -m comment --comment \"default/web:http\" -m tcp --dport 80 -j REDIRECT --to-ports 41000
-A KUBE-PORTALS-HOST -d 198.18.5.1/32 -p tcp -m comment --comment \"default/web:http\" -m tcp --dport 80 -j DNAT --to-destination 198.18.0.11:41000
-A KUBE-NODEPORT-CONTAINER -p tcp -m comment --comment \"default/web:http\" -m tcp --dport 30080 -j REDIRECT --to-ports 41000
-A KUBE-NODEPORT-HOST -p tcp -m comment --comment \"default/web:http\" -m tcp --dport 30080 -j DNAT --to-destination 198.18.0.11:41000
-A KUBE-PORTALS-CONTAINER -d 10.96.0.53/32 -p udp -m comment --comment \"kube-system/dns:dns\" -m udp --dport 53 -j REDIRECT --to-ports 41001
-A KUBE-PORTALS-HOST -d 10.96.0.53/32 -p udp -m comment --comment \"kube-system/dns:dns\" -m udp --dport 53 -j DNAT --to-destination 198.18.0.11:41001
COMMIT
*filter
:KUBE-NODEPORT-NON-LOCAL - [0:0]
-A KUBE-NODEPORT-NON-LOCAL -p tcp -m comment --comment \"default/web:http\" -m tcp --dport 41000 -j ACCEPT
COMMIT
";
        assert_eq!(input, want);
    }

    #[test]
    fn missing_jumps_are_added_once_and_cleanup_removes_chains_and_jumps() {
        let all = jumps();
        let empty = "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n";
        let missing = missing_jumps(empty, &all);
        assert_eq!(missing.len(), 5);
        let input = restore_input(&[web()], Ipv4Addr::new(198, 18, 0, 11), &missing);
        assert!(input.contains(
            "-A PREROUTING -m addrtype --dst-type LOCAL -m comment --comment \"handle service NodePorts; NOTE: this must be the last rule in the chain\" -j KUBE-NODEPORT-CONTAINER\n"
        ));
        // What iptables-save prints after that restore has the same lines: every jump present.
        let saved = input;
        assert!(missing_jumps(&saved, &all).is_empty(), "{saved}");
        let cleanup = cleanup_input(&saved);
        for c in NAT_CHAINS.iter().chain(&FILTER_CHAINS) {
            assert!(cleanup.contains(&format!("-X {c}\n")), "{cleanup}");
        }
        assert_eq!(cleanup.matches("\n-D ").count(), 5, "{cleanup}");
        assert!(cleanup_input(empty).is_empty());
    }
}
