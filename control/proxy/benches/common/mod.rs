//! Objects shared by the programming benchmarks: `n` ClusterIP services with `k` endpoints
//! each, as the reflector caches hold them (`Arc`s).

use std::{net::Ipv4Addr, sync::Arc};

use k8s_openapi::api::core::v1::{Endpoints, Service};
use serde_json::json;

pub fn service(i: u32) -> Arc<Service> {
    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 10)) + i);
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {"name": format!("svc-{i}"), "namespace": "default",
                         "resourceVersion": "1", "uid": format!("uid-{i}")},
            "spec": {"clusterIP": ip.to_string(), "ports": [{"port": 80, "targetPort": 8080}]}
        }))
        .unwrap_or_else(|e| panic!("service: {e}")),
    )
}

/// Endpoints of service `i`: pods `i*k .. i*k+k`, the first replaced by pod `replace` if set.
pub fn endpoints(i: u32, k: u32, replace: Option<u32>) -> Arc<Endpoints> {
    let base = u32::from(Ipv4Addr::new(10, 200, 0, 0));
    let addrs: Vec<_> = (0..k)
        .map(|j| {
            let n = match (j, replace) {
                (0, Some(r)) => r,
                _ => i * k + j,
            };
            json!({"ip": Ipv4Addr::from(base + n).to_string(), "nodeName": "node-b"})
        })
        .collect();
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {"name": format!("svc-{i}"), "namespace": "default",
                         "resourceVersion": "1",
                         "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": "2026-01-01T00:00:00Z"}},
            "subsets": [{"addresses": addrs, "ports": [{"port": 8080}]}]
        }))
        .unwrap_or_else(|e| panic!("endpoints: {e}")),
    )
}

pub fn objects(n: u32, k: u32) -> (Vec<Arc<Service>>, Vec<Arc<Endpoints>>) {
    (
        (0..n).map(service).collect(),
        (0..n).map(|i| endpoints(i, k, None)).collect(),
    )
}
