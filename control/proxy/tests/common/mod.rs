//! Service fixtures shared by the rule renderers' tests (iptables, nftables): every shape
//! kube-proxy's renderers know, one service each.

#![allow(dead_code)]

use std::{net::Ipv4Addr, sync::Arc};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use serde_json::{Value, json};
use xkube_proxy::model::{EndpointSource, ServiceModel, build};

pub const NODE: &str = "node-1";

pub fn model(svc: Value, endpoints: &[(&str, Option<&str>, bool)], ports: Value) -> ServiceModel {
    let svc: Service = serde_json::from_value(svc).expect("service");
    let ns = svc.metadata.namespace.clone().unwrap_or_default();
    let name = svc.metadata.name.clone().unwrap_or_default();
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": format!("{name}-abc"), "namespace": ns,
                     "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "endpoints": endpoints.iter().map(|(ip, node, ready)| json!({
            "addresses": [ip], "nodeName": node, "conditions": {"ready": ready}
        })).collect::<Vec<_>>(),
        "ports": ports,
    }))
    .expect("slice");
    let slices = [Arc::new(slice)];
    build(&svc, EndpointSource::Slices(&slices)).expect("a model")
}

pub fn service(ns: &str, name: &str, spec: Value) -> Value {
    json!({"metadata": {"namespace": ns, "name": name}, "spec": spec})
}

/// Every shape the renderer knows, one service each.
pub fn fixtures() -> Vec<ServiceModel> {
    let p80 = json!([{"name": "p80", "port": 80, "protocol": "TCP"}]);
    vec![
        // A ClusterIP service with one endpoint (kube-proxy's test vector names).
        model(
            service(
                "ns1",
                "svc1",
                json!({"clusterIP": "172.30.0.41",
                "ports": [{"name": "p80", "port": 80, "targetPort": 80}]}),
            ),
            &[("10.180.0.1", Some(NODE), true)],
            p80.clone(),
        ),
        // LoadBalancer, externalTrafficPolicy Local, a local and a remote endpoint.
        model(
            service(
                "ns2",
                "svc2",
                json!({"type": "LoadBalancer", "clusterIP": "172.30.0.42",
                "externalTrafficPolicy": "Local", "healthCheckNodePort": 30000,
                "ports": [{"name": "p80", "port": 80, "nodePort": 3001}]}),
            )
            .tap(|s| s["status"] = json!({"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}})),
            &[
                ("10.180.0.2", Some(NODE), true),
                ("10.180.1.2", Some("node-2"), true),
            ],
            p80.clone(),
        ),
        // NodePort, three endpoints: kube-proxy's probabilities.
        model(
            service(
                "ns3",
                "svc3",
                json!({"type": "NodePort", "clusterIP": "172.30.0.43",
                "ports": [{"name": "p80", "port": 80, "nodePort": 3003}]}),
            ),
            &[
                ("10.180.0.3", Some(NODE), true),
                ("10.180.1.3", Some("node-2"), true),
                ("10.180.2.3", Some("node-3"), true),
            ],
            p80.clone(),
        ),
        // externalIPs and ClientIP affinity.
        model(
            service(
                "ns4",
                "svc4",
                json!({"clusterIP": "172.30.0.44",
                "externalIPs": ["192.168.99.11"], "sessionAffinity": "ClientIP",
                "ports": [{"name": "p80", "port": 80}]}),
            ),
            &[
                ("10.180.0.4", Some(NODE), true),
                ("10.180.1.4", Some("node-2"), true),
            ],
            p80.clone(),
        ),
        // loadBalancerSourceRanges: the KUBE-FW chain and the KUBE-PROXY-FIREWALL drop.
        model(
            service(
                "ns5",
                "svc5",
                json!({"type": "LoadBalancer", "clusterIP": "172.30.0.45",
                "loadBalancerSourceRanges": ["203.0.113.0/25"],
                "ports": [{"name": "p80", "port": 80, "nodePort": 3002}]}),
            )
            .tap(|s| s["status"] = json!({"loadBalancer": {"ingress": [{"ip": "5.6.7.8"}]}})),
            &[("10.180.0.5", Some(NODE), true)],
            p80.clone(),
        ),
        // No endpoints: REJECT for the cluster IP, the external IP and the node port.
        model(
            service(
                "ns6",
                "svc6",
                json!({"type": "NodePort", "clusterIP": "172.30.0.46",
                "externalIPs": ["192.168.99.16"],
                "ports": [{"name": "p80", "port": 80, "nodePort": 3006}]}),
            ),
            &[("10.180.0.6", Some(NODE), false)],
            p80.clone(),
        ),
        // UDP, an unnamed port, internalTrafficPolicy Local with no local endpoint: DROP.
        model(
            service(
                "ns7",
                "svc7",
                json!({"clusterIP": "172.30.0.47",
                "internalTrafficPolicy": "Local",
                "ports": [{"port": 53, "protocol": "UDP"}]}),
            ),
            &[("10.180.1.7", Some("node-2"), true)],
            json!([{"port": 53, "protocol": "UDP"}]),
        ),
        // externalTrafficPolicy Local without a local endpoint: pods short-circuit, the rest
        // is dropped.
        model(
            service(
                "ns8",
                "svc8",
                json!({"type": "NodePort", "clusterIP": "172.30.0.48",
                "externalTrafficPolicy": "Local",
                "ports": [{"name": "p80", "port": 80, "nodePort": 3008}]}),
            ),
            &[("10.180.1.8", Some("node-2"), true)],
            p80.clone(),
        ),
        // internalTrafficPolicy Local with a local and a remote endpoint, and ClientIP
        // affinity with its own timeout: KUBE-SVL is the internal chain.
        model(
            service(
                "ns9",
                "svc9",
                json!({"clusterIP": "172.30.0.49", "internalTrafficPolicy": "Local",
                "sessionAffinity": "ClientIP",
                "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 600}},
                "ports": [{"name": "p80", "port": 80}]}),
            ),
            &[
                ("10.180.0.9", Some(NODE), true),
                ("10.180.1.9", Some("node-2"), true),
            ],
            p80.clone(),
        ),
        // loadBalancerSourceRanges that hold the node's address: the node's own requests to
        // the LB IP are allowed too.
        model(
            service(
                "ns10",
                "svc10",
                json!({"type": "LoadBalancer", "clusterIP": "172.30.0.50",
                "loadBalancerSourceRanges": ["198.18.0.0/24"],
                "ports": [{"name": "p80", "port": 80, "nodePort": 3010}]}),
            )
            .tap(|s| s["status"] = json!({"loadBalancer": {"ingress": [{"ip": "5.6.7.10"}]}})),
            &[("10.180.0.10", Some(NODE), true)],
            p80.clone(),
        ),
        // Every endpoint terminating but still serving: used, as kube-proxy falls back to them.
        model(
            service(
                "ns11",
                "svc11",
                json!({"clusterIP": "172.30.0.51", "ports": [{"name": "p80", "port": 80}]}),
            ),
            &[
                ("10.180.0.11", Some(NODE), false),
                ("10.180.1.11", Some("node-2"), false),
            ],
            p80,
        )
        .tap_model(|m| {
            for e in &mut m.ports[0].endpoints {
                e.serving = true;
                e.terminating = e.addr == Ipv4Addr::new(10, 180, 0, 11);
            }
            // The second is neither ready nor terminating: not used.
        }),
    ]
}

pub trait TapModel {
    fn tap_model(self, f: impl FnOnce(&mut Self)) -> Self;
}
impl TapModel for ServiceModel {
    fn tap_model(mut self, f: impl FnOnce(&mut Self)) -> Self {
        f(&mut self);
        self
    }
}

pub trait Tap {
    fn tap(self, f: impl FnOnce(&mut Self)) -> Self;
}
impl Tap for Value {
    fn tap(mut self, f: impl FnOnce(&mut Self)) -> Self {
        f(&mut self);
        self
    }
}

/// Compares `got` with the golden file `tests/data/<dir>/<name>`; `XKUBE_BLESS=1` rewrites
/// it (review the diff!).
pub fn golden(dir: &str, name: &str, got: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(dir)
        .join(name);
    if std::env::var_os("XKUBE_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().expect("dir")).expect("mkdir");
        std::fs::write(&path, got).expect("write golden file");
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (XKUBE_BLESS=1 writes it)", path.display()));
    if want != got {
        let diff: Vec<String> = want
            .lines()
            .zip(got.lines())
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .take(5)
            .map(|(i, (a, b))| format!("line {}:\n  want {a}\n  got  {b}", i + 1))
            .collect();
        panic!(
            "{name} differs ({} vs {} lines):\n{}",
            want.lines().count(),
            got.lines().count(),
            diff.join("\n")
        );
    }
}
