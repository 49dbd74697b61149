//! Kubernetes objects -> DNS records, as the Kubernetes DNS specification (schema 1.0.1)
//! names them: pure functions, no I/O.
//!
//! - A Service with a ClusterIP: `<svc>.<ns>.svc.<zone>` A (AAAA) the ClusterIP(s), an SRV
//!   `_<port>._<proto>.<svc>.<ns>.svc.<zone>` per named port aimed at that name, a PTR per
//!   ClusterIP.
//! - A headless Service (`clusterIP: None`): `<svc>.<ns>.svc.<zone>` A per ready endpoint (no
//!   records, hence NXDOMAIN, without one), `<host>.<svc>.<ns>.svc.<zone>` A per endpoint,
//!   where `<host>` is the endpoint's hostname or, as CoreDNS does, its address with dashes
//!   (`10-244-1-5`); SRV per named endpoint port and endpoint, aimed at the endpoint's name; a
//!   PTR per endpoint address back to that name.
//! - An ExternalName Service: a CNAME to the external name.
//! - The zone itself: SOA, NS and the `dns-version` TXT record.
//!
//! Pod records (`a-b-c-d.<ns>.pod.<zone>`) are answered at query time ([`pod_query`]).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use hickory_server::proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_server::proto::rr::{LowerName, Name, RData, Record};
use k8s_openapi::api::core::v1::{ObjectReference, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The schema version served at `dns-version.<zone>` (kubernetes/dns docs/specification.md).
pub const SCHEMA_VERSION: &str = "1.0.1";

/// Kubernetes' annotation (pre-`publishNotReadyAddresses`) that makes unready endpoints count.
pub const TOLERATE_UNREADY: &str = "service.alpha.kubernetes.io/tolerate-unready-endpoints";

/// Label naming an EndpointSlice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The served zone: its origin (`cluster.local.`) and the TTL of every answer.
#[derive(Debug, Clone)]
pub struct Zone {
    pub origin: Name,
    pub ttl: u32,
}

impl Zone {
    /// The zone of `domain` (`cluster.local`, with or without the final dot).
    pub fn new(domain: &str, ttl: u32) -> Result<Self, String> {
        let mut origin = Name::from_ascii(domain.trim_end_matches('.'))
            .map_err(|e| format!("cluster domain {domain:?}: {e}"))?;
        origin.set_fqdn(true);
        if origin.is_root() {
            return Err("the cluster domain cannot be the root".into());
        }
        Ok(Zone {
            origin: origin.to_lowercase(),
            ttl,
        })
    }

    /// `<labels...>.<zone>.`; `None` when a label is no valid DNS label.
    pub fn name(&self, labels: &[&str]) -> Option<Name> {
        let mut n = Name::from_labels(labels.iter().map(|l| l.as_bytes())).ok()?;
        n = n.append_domain(&self.origin).ok()?;
        Some(n.to_lowercase())
    }

    /// `<svc>.<ns>.svc.<zone>.`
    pub fn service_name(&self, ns: &str, svc: &str) -> Option<Name> {
        self.name(&[svc, ns, "svc"])
    }

    fn record(&self, name: Name, data: RData) -> Record {
        Record::from_rdata(name, self.ttl, data)
    }

    /// The zone's own records: SOA and NS at the apex, `dns-version` TXT.
    pub fn apex_records(&self, serial: u32) -> Vec<Record> {
        apex(&self.origin, &self.origin, self.ttl, serial)
            .into_iter()
            .chain(
                self.name(&["dns-version"]).map(|n| {
                    self.record(n, RData::TXT(TXT::new(vec![SCHEMA_VERSION.to_string()])))
                }),
            )
            .collect()
    }

    /// SOA and NS for a reverse zone (`in-addr.arpa.`) this server answers for.
    pub fn reverse_apex_records(&self, apex_name: &Name, serial: u32) -> Vec<Record> {
        apex(apex_name, &self.origin, self.ttl, serial)
    }
}

fn apex(apex_name: &Name, origin: &Name, ttl: u32, serial: u32) -> Vec<Record> {
    let at = |l: &[&[u8]]| {
        Name::from_labels(l.iter().copied())
            .and_then(|n| n.append_domain(origin))
            .unwrap_or_else(|_| origin.clone())
    };
    let mname = at(&[b"ns", b"dns"]);
    let rname = at(&[b"hostmaster"]);
    // CoreDNS's values: refresh 2 h, retry 30 min, expire 1 day; the minimum (negative TTL) is
    // the record TTL, so an NXDOMAIN is cached no longer than a positive answer.
    let soa = SOA::new(mname.clone(), rname, serial, 7200, 1800, 86400, ttl);
    vec![
        Record::from_rdata(apex_name.clone(), ttl, RData::SOA(soa)),
        Record::from_rdata(apex_name.clone(), ttl, RData::NS(NS(mname))),
    ]
}

/// The reverse-lookup name of `ip` (`d.c.b.a.in-addr.arpa.`, or the nibbles under `ip6.arpa.`).
pub fn reverse_name(ip: IpAddr) -> Name {
    Name::from(ip)
}

/// `a-b-c-d` (IPv4) or the address with `:` as `-` (IPv6): the label CoreDNS gives endpoints
/// without a hostname and pods.
pub fn dashed(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
        IpAddr::V6(v6) => v6.to_string().replace(':', "-"),
    }
}

fn address(name: Name, ttl: u32, ip: IpAddr) -> Record {
    let data = match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    };
    Record::from_rdata(name, ttl, data)
}

/// A port of an endpoint or a Service: its name, lowercase protocol and number.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Port {
    pub name: String,
    pub protocol: String,
    pub port: u16,
}

/// A ready endpoint of a Service, as DNS sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: IpAddr,
    /// The endpoint's hostname (its own, or its pod's `spec.hostname` when the pod's
    /// `spec.subdomain` is the Service).
    pub hostname: Option<String>,
    /// The named ports of the endpoint's slice.
    pub ports: Vec<Port>,
}

/// Whether unready endpoints of `svc` are published (`publishNotReadyAddresses`, or the
/// deprecated annotation).
pub fn publishes_unready(svc: &Service) -> bool {
    let spec = svc.spec.as_ref();
    spec.and_then(|s| s.publish_not_ready_addresses) == Some(true)
        || svc
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(TOLERATE_UNREADY))
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// Whether `svc` is headless (`clusterIP: None`).
pub fn is_headless(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None")
}

/// The endpoints of `svc` DNS publishes, from its `slices`: ready ones (a missing `ready`
/// condition means ready, as the API says) or all of them when the Service publishes unready
/// addresses; one per address, sorted by address. `pod_hostname` gives a pod's hostname for
/// this Service when the slice does not carry one (the pod's `spec.hostname`, when its
/// `spec.subdomain` names the Service).
pub fn endpoints<'a>(
    svc: &Service,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    pod_hostname: impl Fn(&ObjectReference) -> Option<String>,
) -> Vec<Endpoint> {
    let unready_too = publishes_unready(svc);
    let mut by_ip: BTreeMap<IpAddr, Endpoint> = BTreeMap::new();
    for slice in slices {
        let ports: Vec<Port> = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                let name = p.name.as_deref().filter(|n| !n.is_empty())?;
                Some(Port {
                    name: name.to_string(),
                    protocol: p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase(),
                    port: u16::try_from(p.port?).ok()?,
                })
            })
            .collect();
        for ep in &slice.endpoints {
            let ready = ep.conditions.as_ref().and_then(|c| c.ready) != Some(false);
            if !(ready || unready_too) {
                continue;
            }
            let hostname = ep
                .hostname
                .clone()
                .or_else(|| ep.target_ref.as_ref().and_then(&pod_hostname));
            for a in &ep.addresses {
                let Ok(ip) = IpAddr::from_str(a) else {
                    continue;
                };
                by_ip.entry(ip).or_insert_with(|| Endpoint {
                    ip,
                    hostname: hostname.clone(),
                    ports: ports.clone(),
                });
            }
        }
    }
    by_ip.into_values().collect()
}

/// The records of Service `svc` with the published `endpoints` (see [`endpoints`]).
pub fn service_records(zone: &Zone, svc: &Service, endpoints: &[Endpoint]) -> Vec<Record> {
    let ns = svc.metadata.namespace.as_deref().unwrap_or("default");
    let Some(name) = svc
        .metadata
        .name
        .as_deref()
        .and_then(|n| zone.service_name(ns, n))
    else {
        return Vec::new();
    };
    let Some(spec) = svc.spec.as_ref() else {
        return Vec::new();
    };
    let ttl = zone.ttl;
    let mut out = Vec::new();
    if spec.type_.as_deref() == Some("ExternalName") {
        if let Some(target) = spec
            .external_name
            .as_deref()
            .and_then(|e| Name::from_ascii(e.trim_end_matches('.')).ok())
        {
            let mut target = target;
            target.set_fqdn(true);
            out.push(zone.record(name, RData::CNAME(CNAME(target))));
        }
        return out;
    }
    let srv = |port: &Port, target: &Name, weight: u16| -> Option<Record> {
        let owner = Name::from_labels([
            format!("_{}", port.name).as_bytes(),
            format!("_{}", port.protocol).as_bytes(),
        ])
        .ok()?
        .append_domain(&name)
        .ok()?
        .to_lowercase();
        Some(Record::from_rdata(
            owner,
            ttl,
            RData::SRV(SRV::new(0, weight, port.port, target.clone())),
        ))
    };
    if is_headless(svc) {
        // RFC 2782 weights spread over the endpoints, as CoreDNS gives them.
        let weight = u16::try_from((100 / endpoints.len().max(1)).max(1)).unwrap_or(1);
        for ep in endpoints {
            let host = ep.hostname.clone().unwrap_or_else(|| dashed(ep.ip));
            let Some(host_name) = Name::from_labels([host.as_bytes()])
                .ok()
                .and_then(|h| h.append_domain(&name).ok())
                .map(|h| h.to_lowercase())
            else {
                continue;
            };
            out.push(address(name.clone(), ttl, ep.ip));
            out.push(address(host_name.clone(), ttl, ep.ip));
            out.push(Record::from_rdata(
                reverse_name(ep.ip),
                ttl,
                RData::PTR(PTR(host_name.clone())),
            ));
            out.extend(ep.ports.iter().filter_map(|p| srv(p, &host_name, weight)));
        }
        return out;
    }
    let ips = spec
        .cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
        .filter_map(|ip| IpAddr::from_str(ip).ok());
    let mut seen = Vec::new();
    for ip in ips {
        if seen.contains(&ip) {
            continue;
        }
        seen.push(ip);
        out.push(address(name.clone(), ttl, ip));
        out.push(Record::from_rdata(
            reverse_name(ip),
            ttl,
            RData::PTR(PTR(name.clone())),
        ));
    }
    if seen.is_empty() {
        // No address allocated (yet): no records at all.
        return out;
    }
    for p in spec.ports.iter().flatten() {
        let Some(port_name) = p.name.as_deref().filter(|n| !n.is_empty()) else {
            continue;
        };
        let Ok(number) = u16::try_from(p.port) else {
            continue;
        };
        let port = Port {
            name: port_name.to_string(),
            protocol: p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase(),
            port: number,
        };
        out.extend(srv(&port, &name, 100));
    }
    out
}

/// A pod name query, `a-b-c-d.<ns>.pod.<zone>.`: the address and the namespace.
pub fn pod_query(zone: &Zone, name: &LowerName) -> Option<(Ipv4Addr, String)> {
    let name = Name::from(name.clone());
    if name.num_labels() != zone.origin.num_labels() + 3 || !zone.origin.zone_of(&name) {
        return None;
    }
    let labels: Vec<&[u8]> = name.iter().collect();
    if !labels[2].eq_ignore_ascii_case(b"pod") {
        return None;
    }
    let first = std::str::from_utf8(labels[0]).ok()?;
    let ip = Ipv4Addr::from_str(&first.replace('-', ".")).ok()?;
    let ns = std::str::from_utf8(labels[1]).ok()?.to_ascii_lowercase();
    Some((ip, ns))
}

/// The A record answering a pod name query.
pub fn pod_record(zone: &Zone, ip: Ipv4Addr, ns: &str) -> Option<Record> {
    let name = zone.name(&[&dashed(IpAddr::V4(ip)), ns, "pod"])?;
    Some(address(name, zone.ttl, IpAddr::V4(ip)))
}

/// The PTR record of a pod address, aimed at its pod name.
pub fn pod_ptr(zone: &Zone, ip: IpAddr, ns: &str) -> Option<Record> {
    let target = zone.name(&[&dashed(ip), ns, "pod"])?;
    Some(Record::from_rdata(
        reverse_name(ip),
        zone.ttl,
        RData::PTR(PTR(target)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn zone() -> Zone {
        Zone::new("cluster.local", 5).expect("zone")
    }

    fn svc(v: serde_json::Value) -> Service {
        serde_json::from_value(v).expect("service literal")
    }

    fn slice(v: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(v).expect("slice literal")
    }

    fn text(records: &[Record]) -> Vec<String> {
        let mut v: Vec<String> = records
            .iter()
            .map(|r| format!("{} {} {}", r.name, r.record_type(), r.data))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn cluster_ip_service_has_a_srv_for_named_ports_and_ptr() {
        let s = svc(json!({
            "metadata": {"name": "web", "namespace": "prod"},
            "spec": {"clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"],
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP"},
                               {"port": 8080}]}
        }));
        let r = text(&service_records(&zone(), &s, &[]));
        assert_eq!(
            r,
            vec![
                "20.0.96.10.in-addr.arpa. PTR web.prod.svc.cluster.local.",
                "_http._tcp.web.prod.svc.cluster.local. SRV 0 100 80 web.prod.svc.cluster.local.",
                "web.prod.svc.cluster.local. A 10.96.0.20",
            ]
        );
    }

    #[test]
    fn service_without_an_address_yet_has_no_records() {
        let s = svc(json!({"metadata": {"name": "w", "namespace": "d"},
                          "spec": {"ports": [{"name": "http", "port": 80}]}}));
        assert!(service_records(&zone(), &s, &[]).is_empty());
    }

    #[test]
    fn external_name_is_a_cname_to_the_fqdn() {
        let s = svc(json!({"metadata": {"name": "ext", "namespace": "d"},
                          "spec": {"type": "ExternalName", "externalName": "www.example.com"}}));
        assert_eq!(
            text(&service_records(&zone(), &s, &[])),
            vec!["ext.d.svc.cluster.local. CNAME www.example.com."]
        );
    }

    fn headless() -> Service {
        svc(json!({"metadata": {"name": "db", "namespace": "d"},
                   "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}}))
    }

    #[test]
    fn headless_endpoints_are_ready_ones_with_hostnames_from_slice_or_pod() {
        let sl = slice(json!({
            "metadata": {"name": "db", "namespace": "d",
                         "labels": {"kubernetes.io/service-name": "db"}},
            "addressType": "IPv4",
            "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}, {"name": "", "port": 1}],
            "endpoints": [
                {"addresses": ["10.244.1.5"], "hostname": "db-0", "conditions": {"ready": true}},
                {"addresses": ["10.244.1.6"], "conditions": {},
                 "targetRef": {"kind": "Pod", "namespace": "d", "name": "db-1"}},
                {"addresses": ["10.244.1.7"], "conditions": {"ready": false}},
                {"addresses": ["10.244.1.8"]}
            ]
        }));
        let eps = endpoints(&headless(), [&sl], |r| {
            (r.name.as_deref() == Some("db-1")).then(|| "db-1".to_string())
        });
        let got: Vec<(String, Option<String>)> = eps
            .iter()
            .map(|e| (e.ip.to_string(), e.hostname.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("10.244.1.5".into(), Some("db-0".into())),
                ("10.244.1.6".into(), Some("db-1".into())),
                ("10.244.1.8".into(), None),
            ],
            "unready 10.244.1.7 left out; a missing ready condition counts as ready"
        );
        assert_eq!(eps[0].ports.len(), 1, "unnamed ports have no SRV");

        let r = text(&service_records(&zone(), &headless(), &eps));
        for want in [
            "db.d.svc.cluster.local. A 10.244.1.5",
            "db.d.svc.cluster.local. A 10.244.1.8",
            "db-0.db.d.svc.cluster.local. A 10.244.1.5",
            "10-244-1-8.db.d.svc.cluster.local. A 10.244.1.8",
            "5.1.244.10.in-addr.arpa. PTR db-0.db.d.svc.cluster.local.",
            "_pg._tcp.db.d.svc.cluster.local. SRV 0 33 5432 db-1.db.d.svc.cluster.local.",
        ] {
            assert!(r.contains(&want.to_string()), "missing {want} in {r:#?}");
        }
        assert!(!r.iter().any(|l| l.contains("10.244.1.7")), "{r:#?}");
    }

    #[test]
    fn headless_publishing_unready_addresses_includes_them() {
        let mut s = headless();
        s.spec.as_mut().expect("spec").publish_not_ready_addresses = Some(true);
        let sl = slice(json!({
            "metadata": {"name": "db", "namespace": "d"}, "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.244.1.7"], "conditions": {"ready": false}}]
        }));
        assert_eq!(endpoints(&s, [&sl], |_| None).len(), 1);
        assert!(endpoints(&headless(), [&sl], |_| None).is_empty());
    }

    #[test]
    fn headless_without_ready_endpoints_has_no_records() {
        assert!(service_records(&zone(), &headless(), &[]).is_empty());
    }

    #[test]
    fn pod_queries_parse_dashed_addresses_in_the_zone_only() {
        let z = zone();
        let q = |s: &str| pod_query(&z, &LowerName::from(Name::from_ascii(s).expect("name")));
        assert_eq!(
            q("10-244-1-5.Default.pod.cluster.local."),
            Some((Ipv4Addr::new(10, 244, 1, 5), "default".into()))
        );
        assert_eq!(q("10-244-1-5.default.svc.cluster.local."), None);
        assert_eq!(q("10-244-1-500.default.pod.cluster.local."), None);
        assert_eq!(q("10-244-1-5.default.pod.other.local."), None);
        assert_eq!(q("x.10-244-1-5.default.pod.cluster.local."), None);
    }

    #[test]
    fn zone_accepts_a_final_dot_and_refuses_the_root() {
        assert_eq!(
            Zone::new("Cluster.Local.", 5)
                .expect("zone")
                .origin
                .to_string(),
            "cluster.local."
        );
        assert!(Zone::new(".", 5).is_err());
    }
}
