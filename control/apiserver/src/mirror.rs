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
        let slice_name = if i == 0 {
            name.to_string()
        } else {
            format!("{name}-{i}")
        };
        out.push(json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": slice_name,
                "namespace": ns,
                "labels": {"kubernetes.io/service-name": name, MANAGED_BY: MIRROR},
                "ownerReferences": [{"apiVersion": "v1", "kind": "Endpoints", "name": name,
                                     "uid": meta::uid(ep), "controller": true, "blockOwnerDeletion": true}],
            },
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": ports,
        }));
    }
    out
}

fn same(a: &Value, b: &Value) -> bool {
    a["endpoints"] == b["endpoints"]
        && a["ports"] == b["ports"]
        && meta::labels(a) == meta::labels(b)
}

async fn reconcile(
    reg: &Arc<Registry>,
    slices: &'static ResourceInfo,
    ns: &str,
    name: &str,
    ep: Option<&Value>,
) {
    let want = ep.map(slices_for).unwrap_or_default();
    let selector = LabelSelector::parse(&format!(
        "kubernetes.io/service-name={name},{MANAGED_BY}={MIRROR}"
    ));
    let Ok(selector) = selector else {
        return;
    };
    let have = match reg
        .list(
            slices,
            Some(ns),
            &selector,
            &FieldSelector::default(),
            false,
        )
        .await
    {
        Ok((items, _)) => items,
        Err(e) => {
            tracing::warn!(ns, name, error = %e.message, "listing endpoint slices failed");
            return;
        }
    };
    let opts = WriteOptions::default();
    for w in &want {
        let wname = meta::name(w);
        match have.iter().find(|h| meta::name(h) == wname) {
            Some(h) if same(h, w) => {}
            Some(h) => {
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
            None => {
                if let Err(e) = reg.create(slices, Some(ns), w.clone(), &opts).await {
                    tracing::debug!(ns, name = wname, error = %e.message, "creating endpoint slice");
                }
            }
        }
    }
    for h in &have {
        if !want.iter().any(|w| meta::name(w) == meta::name(h)) {
            let _ = reg
                .delete(slices, Some(ns), meta::name(h), &DeleteOptions::default())
                .await;
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
                    let current = (ev.kind != EventType::Deleted).then_some(&**o);
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
    }
}
