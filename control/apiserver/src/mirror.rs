//! Mirrors every Endpoints object into EndpointSlices (`discovery.k8s.io/v1`, one per subset,
//! labelled `kubernetes.io/service-name`), the way Kubernetes' mirroring controller does, so
//! clients that read slices (kubectl describe service) see the endpoints. Level-triggered from
//! the Endpoints watch cache; one writer.

use std::sync::Arc;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use xkube_api::{FieldSelector, LabelSelector, ResourceInfo, meta};

use crate::registry::{DeleteOptions, Registry, WriteOptions};
use crate::watchcache::{EventType, Message, Start};

/// Label marking slices this mirror owns.
pub const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY`].
pub const MIRROR: &str = "endpointslicemirroring-controller.k8s.io";

/// Desired slices of one Endpoints object.
pub fn slices_for(ep: &Value) -> Vec<Value> {
    let name = meta::name(ep);
    let ns = meta::namespace(ep);
    let mut out = Vec::new();
    for (i, subset) in ep["subsets"].as_array().into_iter().flatten().enumerate() {
        let mut endpoints = Vec::new();
        for (key, ready) in [("addresses", true), ("notReadyAddresses", false)] {
            for a in subset[key].as_array().into_iter().flatten() {
                let mut e = json!({"addresses": [a["ip"].clone()], "conditions": {"ready": ready}});
                if let Some(n) = a["nodeName"].as_str() {
                    e["nodeName"] = json!(n);
                }
                if !a["targetRef"].is_null() {
                    e["targetRef"] = a["targetRef"].clone();
                }
                endpoints.push(e);
            }
        }
        let ports: Vec<Value> = subset["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                // `name` is always set (empty for unnamed ports), as Kubernetes' controllers
                // do: kubectl dereferences it.
                json!({"name": p["name"].as_str().unwrap_or(""), "port": p["port"],
                       "protocol": p["protocol"].as_str().unwrap_or("TCP")})
            })
            .collect();
        let mut slice = json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": slice_name(name, i),
                "namespace": ns,
                "labels": {"kubernetes.io/service-name": name, MANAGED_BY: MIRROR},
                "ownerReferences": [{"apiVersion": "v1", "kind": "Endpoints", "name": name,
                                     "uid": meta::uid(ep), "controller": true, "blockOwnerDeletion": true}],
            },
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": ports,
        });
        // Annotations are copied, as Kubernetes' mirroring controller does (the proxies read
        // `endpoints.kubernetes.io/last-change-trigger-time` for their programming latency),
        // except kubectl's last-applied configuration.
        let mut annotations = meta::string_map(&ep["metadata"]["annotations"]);
        annotations.remove(LAST_APPLIED);
        if !annotations.is_empty() {
            slice["metadata"]["annotations"] = json!(annotations);
        }
        out.push(slice);
    }
    out
}

/// kubectl's `apply` annotation, never mirrored.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

fn same(a: &Value, b: &Value) -> bool {
    a["endpoints"] == b["endpoints"]
        && a["ports"] == b["ports"]
        && meta::labels(a) == meta::labels(b)
        && a["metadata"]["annotations"] == b["metadata"]["annotations"]
}

/// The name of the `i`th slice of Endpoints `name` (the mirror's names are deterministic).
fn slice_name(name: &str, i: usize) -> String {
    if i == 0 {
        name.to_string()
    } else {
        format!("{name}-{i}")
    }
}

/// Whether `slice` is one this mirror wrote for Endpoints `name`.
fn mirrored_for(slice: &Value, name: &str) -> bool {
    let labels = meta::labels(slice);
    labels.get(MANAGED_BY).map(String::as_str) == Some(MIRROR)
        && labels.get("kubernetes.io/service-name").map(String::as_str) == Some(name)
}

/// Brings the slices of Endpoints `ns/name` to what `ep` (None: deleted) asks for, with point
/// reads of the deterministic slice names (a label-selected list would scan every slice of
/// the namespace per event: quadratic at 10k services).
async fn reconcile(
    reg: &Arc<Registry>,
    slices: &'static ResourceInfo,
    ns: &str,
    name: &str,
    ep: Option<&Value>,
) {
    let want = ep.map(slices_for).unwrap_or_default();
    let opts = WriteOptions::default();
    for w in &want {
        let wname = meta::name(w);
        match reg.get(slices, Some(ns), wname).await {
            Ok((h, _)) if same(&h, w) => {}
            Ok((h, _)) if !mirrored_for(&h, name) => {
                tracing::debug!(
                    ns,
                    name = wname,
                    "endpoint slice not managed by the mirror; left alone"
                );
            }
            Ok((h, _)) => {
                let mut u = w.clone();
                meta::set(
                    &mut u,
                    "resourceVersion",
                    h["metadata"]["resourceVersion"].clone(),
                );
                if let Err(e) = reg
                    .update(slices, Some(ns), wname, u, None, &opts, None)
                    .await
                {
                    tracing::debug!(ns, name = wname, error = %e.message, "updating endpoint slice");
                }
            }
            Err(e) if e.reason == "NotFound" => {
                if let Err(e) = reg.create(slices, Some(ns), w.clone(), &opts).await {
                    tracing::debug!(ns, name = wname, error = %e.message, "creating endpoint slice");
                }
            }
            Err(e) => {
                tracing::warn!(ns, name = wname, error = %e.message, "reading endpoint slice failed");
            }
        }
    }
    // Slices beyond the wanted ones (fewer subsets, or the Endpoints deleted).
    for i in want.len().. {
        let sname = slice_name(name, i);
        match reg.get(slices, Some(ns), &sname).await {
            Ok((h, _)) if mirrored_for(&h, name) => {
                let _ = reg
                    .delete(slices, Some(ns), &sname, &DeleteOptions::default())
                    .await;
            }
            // Another owner's slice, or the first missing name: the mirror's slices are
            // numbered without gaps.
            _ => break,
        }
    }
}

/// Runs the mirror until cancelled.
pub async fn run(reg: Arc<Registry>, cancel: CancellationToken) {
    let (Some(endpoints), Some(slices)) = (
        reg.caches.get("endpoints").cloned(),
        xkube_api::resources::find("discovery.k8s.io", "v1", "endpointslices"),
    ) else {
        return;
    };
    loop {
        let start = endpoints.start("/registry/endpoints/", None);
        let (initial, mut live) = match start {
            Start::Ok { initial, live, .. } => (initial, live),
            _ => {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => continue,
                }
            }
        };
        // Full resync: every Endpoints, then slices whose Endpoints are gone.
        for ev in &initial {
            let o = &ev.object;
            reconcile(&reg, slices, meta::namespace(o), meta::name(o), Some(o)).await;
        }
        if let Ok(sel) = LabelSelector::parse(&format!("{MANAGED_BY}={MIRROR}"))
            && let Ok((all, _)) = reg
                .list(slices, None, &sel, &FieldSelector::default(), false)
                .await
        {
            for s in all {
                let svc = meta::labels(&s)
                    .get("kubernetes.io/service-name")
                    .cloned()
                    .unwrap_or_default();
                let ns = meta::namespace(&s).to_string();
                if !initial
                    .iter()
                    .any(|e| meta::name(&e.object) == svc && meta::namespace(&e.object) == ns)
                {
                    reconcile(&reg, slices, &ns, &svc, None).await;
                }
            }
        }
        loop {
            let msg = tokio::select! {
                _ = cancel.cancelled() => return,
                m = live.recv() => m,
            };
            match msg {
                Ok(Message::Event(ev)) => {
                    let o = &ev.object;
                    let current = (ev.kind != EventType::Deleted).then_some(o.value());
                    reconcile(&reg, slices, meta::namespace(o), meta::name(o), current).await;
                }
                Ok(Message::Progress(_)) => {}
                Ok(Message::Reset) | Err(_) => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_slice_per_subset_with_ready_conditions() {
        let ep = json!({"metadata": {"name": "web", "namespace": "d", "uid": "u"},
            "subsets": [{"addresses": [{"ip": "10.0.0.1", "nodeName": "n1"}],
                         "notReadyAddresses": [{"ip": "10.0.0.2"}],
                         "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
                        {"addresses": [{"ip": "10.0.0.3"}], "ports": [{"port": 81}]}]});
        let s = slices_for(&ep);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0]["metadata"]["name"], "web");
        assert_eq!(s[1]["metadata"]["name"], "web-1");
        assert_eq!(
            s[0]["metadata"]["labels"]["kubernetes.io/service-name"],
            "web"
        );
        assert_eq!(
            s[0]["endpoints"][0],
            json!({"addresses": ["10.0.0.1"], "conditions": {"ready": true}, "nodeName": "n1"})
        );
        assert_eq!(s[0]["endpoints"][1]["conditions"]["ready"], false);
        assert_eq!(
            s[1]["ports"],
            json!([{"name": "", "port": 81, "protocol": "TCP"}])
        );
        assert!(s[0]["metadata"]["annotations"].is_null(), "none to copy");
    }

    #[test]
    fn the_trigger_time_is_mirrored_and_last_applied_is_not() {
        let ep = json!({"metadata": {"name": "web", "namespace": "d", "uid": "u",
            "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": "2026-12-05T08:00:00Z",
                            LAST_APPLIED: "{}"}},
            "subsets": [{"addresses": [{"ip": "10.0.0.1"}], "ports": [{"port": 80}]}]});
        let s = slices_for(&ep);
        assert_eq!(
            s[0]["metadata"]["annotations"],
            json!({"endpoints.kubernetes.io/last-change-trigger-time": "2026-12-05T08:00:00Z"})
        );
    }
}
