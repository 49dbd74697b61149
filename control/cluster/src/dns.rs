//! Cluster DNS on the local cluster: the objects of `deploy/dns/kube-dns.yaml` (ServiceAccount,
//! Service `kube-system/kube-dns` at the tenth address of the service range, the `kube-dns`
//! Deployment of `xkube dns` pods), applied as written, and the kubelet flags that point pods
//! at it.

use std::net::Ipv4Addr;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use serde::Deserialize as _;
use xkube_client::{Api, Client};

use crate::{Error, Result};

/// The manifest, one definition for the docs and for `cluster up`.
pub const MANIFEST: &str = include_str!("../../../deploy/dns/kube-dns.yaml");

/// The cluster domain the local cluster's kubelets and DNS pods use.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// Where DNS objects live.
const NAMESPACE: &str = "kube-system";

/// The DNS Service's address: the tenth of the service range (10.96.0.10 for Kubernetes'
/// default range), as kubeadm places it.
pub fn service_ip() -> Ipv4Addr {
    xkube_api::cluster::SERVICE_CIDR
        .parse::<xkube_api::net::Ipv4Cidr>()
        .ok()
        .and_then(|c| c.nth(10))
        // The constant is a valid /12: never reached.
        .unwrap_or(Ipv4Addr::new(10, 96, 0, 10))
}

/// The manifest's objects.
pub struct Objects {
    pub account: ServiceAccount,
    pub service: Service,
    pub deployment: Deployment,
}

fn invalid(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("deploy/dns/kube-dns.yaml: {what}: {e}"))
}

/// Parses [`MANIFEST`].
pub fn objects() -> Result<Objects> {
    let (mut account, mut service, mut deployment) = (None, None, None);
    for doc in serde_yaml::Deserializer::from_str(MANIFEST) {
        let v = serde_yaml::Value::deserialize(doc).map_err(|e| invalid("YAML", e))?;
        let kind = v
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or_default()
            .to_string();
        let kind = kind.as_str();
        match kind {
            "ServiceAccount" => {
                account = Some(serde_yaml::from_value(v).map_err(|e| invalid(kind, e))?)
            }
            "Service" => service = Some(serde_yaml::from_value(v).map_err(|e| invalid(kind, e))?),
            "Deployment" => {
                deployment = Some(serde_yaml::from_value(v).map_err(|e| invalid(kind, e))?)
            }
            other => return Err(invalid("unexpected kind", other)),
        }
    }
    match (account, service, deployment) {
        (Some(account), Some(service), Some(deployment)) => Ok(Objects {
            account,
            service,
            deployment,
        }),
        _ => Err(invalid(
            "objects",
            "a ServiceAccount, Service and Deployment expected",
        )),
    }
}

/// Creates the DNS objects (`kube-system` exists from the apiserver's bootstrap).
pub async fn deploy(client: &Client) -> Result<()> {
    let o = objects()?;
    let failed =
        |what: &str, e: xkube_client::Error| Error::Invalid(format!("creating {what}: {e}"));
    Api::<ServiceAccount>::namespaced(client.clone(), NAMESPACE)
        .create(&o.account)
        .await
        .map_err(|e| failed("ServiceAccount kube-system/kube-dns", e))?;
    Api::<Service>::namespaced(client.clone(), NAMESPACE)
        .create(&o.service)
        .await
        .map_err(|e| failed("Service kube-system/kube-dns", e))?;
    Api::<Deployment>::namespaced(client.clone(), NAMESPACE)
        .create(&o.deployment)
        .await
        .map_err(|e| failed("Deployment kube-system/kube-dns", e))?;
    Ok(())
}

/// Whether the DNS Deployment has an available replica.
pub async fn available(client: &Client) -> bool {
    Api::<Deployment>::namespaced(client.clone(), NAMESPACE)
        .get("kube-dns")
        .await
        .ok()
        .and_then(|d| d.status)
        .and_then(|s| s.available_replicas)
        .is_some_and(|n| n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_service_sits_at_the_tenth_address_of_the_service_range() {
        assert_eq!(service_ip(), Ipv4Addr::new(10, 96, 0, 10));
        let o = objects().expect("manifest parses");
        let spec = o.service.spec.expect("service spec");
        assert_eq!(
            spec.cluster_ip.as_deref(),
            Some(service_ip().to_string().as_str())
        );
        let ports: Vec<(String, i32, String)> = spec
            .ports
            .iter()
            .flatten()
            .map(|p| {
                (
                    p.name.clone().unwrap_or_default(),
                    p.port,
                    p.protocol.clone().unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(
            ports,
            vec![
                ("dns".into(), 53, "UDP".into()),
                ("dns-tcp".into(), 53, "TCP".into()),
                ("metrics".into(), 9153, "TCP".into()),
            ]
        );
        let selector = spec.selector.expect("selector");
        assert_eq!(
            selector.get("k8s-app").map(String::as_str),
            Some("kube-dns")
        );
    }

    #[test]
    fn deployment_runs_xkube_dns_as_the_kube_dns_account_with_the_selected_label() {
        let o = objects().expect("manifest parses");
        assert_eq!(o.account.metadata.name.as_deref(), Some("kube-dns"));
        let d = o.deployment.spec.expect("deployment spec");
        let labels = d
            .template
            .metadata
            .and_then(|m| m.labels)
            .expect("template labels");
        assert_eq!(labels.get("k8s-app").map(String::as_str), Some("kube-dns"));
        assert_eq!(
            d.selector
                .match_labels
                .expect("match labels")
                .get("k8s-app"),
            labels.get("k8s-app")
        );
        let pod = d.template.spec.expect("pod spec");
        assert_eq!(pod.service_account_name.as_deref(), Some("kube-dns"));
        assert_eq!(pod.dns_policy.as_deref(), Some("Default"));
        let args = pod.containers[0].args.clone().unwrap_or_default();
        assert_eq!(args[0], "dns");
        assert!(
            args.windows(2)
                .any(|w| w[0] == "--cluster-domain" && w[1] == CLUSTER_DOMAIN)
        );
    }
}
