//! Container environment: Service variables in the docker-links format the seeds show, the
//! spec's `env` with `valueFrom` (fieldRef, secretKeyRef, configMapKeyRef) and `$(VAR)`
//! expansion. Pure functions.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{Container, Pod, Service};

/// `my-svc` -> `MY_SVC`.
pub fn env_name(service: &str) -> String {
    service
        .chars()
        .map(|c| {
            if c == '-' {
                '_'
            } else {
                c.to_ascii_uppercase()
            }
        })
        .collect()
}

/// The Service variables for a pod in `namespace`: every Service of that namespace with a
/// cluster IP, plus `kubernetes` from `default` (as the kubelet does for the master service).
/// Sorted by name for a stable order.
pub fn service_env(namespace: &str, services: &[&Service]) -> Vec<(String, String)> {
    let mut picked: BTreeMap<String, &Service> = BTreeMap::new();
    for s in services {
        let ns = s.metadata.namespace.as_deref().unwrap_or("default");
        let name = s.metadata.name.as_deref().unwrap_or("");
        if name.is_empty() {
            continue;
        }
        if ns == namespace || (ns == "default" && name == "kubernetes") {
            picked.insert(name.to_owned(), s);
        }
    }
    let mut out = Vec::new();
    for (name, s) in picked {
        let Some(spec) = &s.spec else { continue };
        let Some(ip) = spec
            .cluster_ip
            .as_deref()
            .filter(|ip| !ip.is_empty() && *ip != "None")
        else {
            continue;
        };
        let ports = spec.ports.as_deref().unwrap_or(&[]);
        let Some(first) = ports.first() else { continue };
        let n = env_name(&name);
        out.push((format!("{n}_SERVICE_HOST"), ip.to_owned()));
        out.push((format!("{n}_SERVICE_PORT"), first.port.to_string()));
        for p in ports {
            if let Some(pn) = p.name.as_deref().filter(|s| !s.is_empty()) {
                out.push((
                    format!("{n}_SERVICE_PORT_{}", env_name(pn)),
                    p.port.to_string(),
                ));
            }
        }
        let proto = |p: &k8s_openapi::api::core::v1::ServicePort| {
            p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase()
        };
        out.push((
            format!("{n}_PORT"),
            format!("{}://{ip}:{}", proto(first), first.port),
        ));
        for p in ports {
            let lower = proto(p);
            let upper = lower.to_ascii_uppercase();
            let base = format!("{n}_PORT_{}_{upper}", p.port);
            out.push((base.clone(), format!("{lower}://{ip}:{}", p.port)));
            out.push((format!("{base}_PROTO"), lower));
            out.push((format!("{base}_PORT"), p.port.to_string()));
            out.push((format!("{base}_ADDR"), ip.to_owned()));
        }
    }
    out
}

/// Where `valueFrom` looks values up.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    pub pod_ip: String,
    pub host_ip: String,
    pub node_name: String,
    /// `secret name -> key -> decoded value`.
    pub secrets: HashMap<String, BTreeMap<String, String>>,
    /// `config map name -> key -> value`.
    pub config_maps: HashMap<String, BTreeMap<String, String>>,
}

/// A pod field by its `fieldRef.fieldPath`.
pub fn field_ref(pod: &Pod, path: &str, src: &Sources) -> Option<String> {
    let m = &pod.metadata;
    let spec = pod.spec.as_ref();
    Some(match path {
        "metadata.name" => m.name.clone()?,
        "metadata.namespace" => m.namespace.clone().unwrap_or_else(|| "default".into()),
        "metadata.uid" => m.uid.clone()?,
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone())?,
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone())?,
        "status.podIP" => src.pod_ip.clone(),
        "status.hostIP" => src.host_ip.clone(),
        p => {
            let (map, key) = if let Some(k) = p.strip_prefix("metadata.labels['") {
                (m.labels.as_ref()?, k.strip_suffix("']")?)
            } else if let Some(k) = p.strip_prefix("metadata.annotations['") {
                (m.annotations.as_ref()?, k.strip_suffix("']")?)
            } else {
                return None;
            };
            map.get(key)?.clone()
        }
    })
}

/// Expands `$(VAR)` references against `vars`; `$$` escapes; unknown references stay as
/// written (Kubernetes' rules).
pub fn expand(s: &str, vars: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(a) = after.strip_prefix('$') {
            out.push('$');
            rest = a;
        } else if let Some(body) = after.strip_prefix('(')
            && let Some(end) = body.find(')')
        {
            let name = &body[..end];
            match vars(name) {
                Some(v) => out.push_str(&v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The environment of `container`: Service variables first, then the spec's `env` in order
/// (later entries override earlier ones, `$(VAR)` sees the ones before it).
pub fn container_env(
    pod: &Pod,
    container: &Container,
    service_vars: &[(String, String)],
    src: &Sources,
) -> Vec<(String, String)> {
    let mut vars: Vec<(String, String)> = service_vars.to_vec();
    let set = |vars: &mut Vec<(String, String)>, k: String, v: String| {
        if let Some(e) = vars.iter_mut().find(|(n, _)| *n == k) {
            e.1 = v;
        } else {
            vars.push((k, v));
        }
    };
    for from in container.env_from.as_deref().unwrap_or(&[]) {
        let prefix = from.prefix.clone().unwrap_or_default();
        let data = if let Some(s) = &from.secret_ref {
            src.secrets.get(&s.name)
        } else if let Some(c) = &from.config_map_ref {
            src.config_maps.get(&c.name)
        } else {
            None
        };
        for (k, v) in data.into_iter().flatten() {
            set(&mut vars, format!("{prefix}{k}"), v.clone());
        }
    }
    for e in container.env.as_deref().unwrap_or(&[]) {
        let value = if let Some(vf) = &e.value_from {
            if let Some(f) = &vf.field_ref {
                field_ref(pod, &f.field_path, src)
            } else if let Some(s) = &vf.secret_key_ref {
                src.secrets
                    .get(&s.name)
                    .and_then(|d| d.get(&s.key))
                    .cloned()
            } else if let Some(c) = &vf.config_map_key_ref {
                src.config_maps
                    .get(&c.name)
                    .and_then(|d| d.get(&c.key))
                    .cloned()
            } else {
                None
            }
            .unwrap_or_default()
        } else {
            let current = vars.clone();
            let lookup = |n: &str| {
                current
                    .iter()
                    .rev()
                    .find(|(k, _)| k == n)
                    .map(|(_, v)| v.clone())
            };
            expand(e.value.as_deref().unwrap_or(""), &lookup)
        };
        set(&mut vars, e.name.clone(), value);
    }
    vars
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(ns: &str, name: &str, ip: &str, ports: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": ip, "ports": ports},
        }))
        .expect("service literal")
    }

    #[test]
    fn service_variables_match_the_seeds_format() {
        let redis = svc(
            "default",
            "redis-master",
            "10.0.0.11",
            json!([{"port": 6379, "protocol": "TCP"}]),
        );
        let other_ns = svc("other", "x", "10.0.0.12", json!([{"port": 80}]));
        let headless = svc("default", "h", "None", json!([{"port": 80}]));
        let kube = svc(
            "default",
            "kubernetes",
            "10.96.0.1",
            json!([{"port": 443, "name": "https"}]),
        );
        let env: HashMap<_, _> = service_env("default", &[&redis, &other_ns, &headless, &kube])
            .into_iter()
            .collect();
        assert_eq!(env["REDIS_MASTER_SERVICE_HOST"], "10.0.0.11");
        assert_eq!(env["REDIS_MASTER_SERVICE_PORT"], "6379");
        assert_eq!(env["REDIS_MASTER_PORT"], "tcp://10.0.0.11:6379");
        assert_eq!(env["REDIS_MASTER_PORT_6379_TCP"], "tcp://10.0.0.11:6379");
        assert_eq!(env["REDIS_MASTER_PORT_6379_TCP_PROTO"], "tcp");
        assert_eq!(env["REDIS_MASTER_PORT_6379_TCP_PORT"], "6379");
        assert_eq!(env["REDIS_MASTER_PORT_6379_TCP_ADDR"], "10.0.0.11");
        assert_eq!(env["KUBERNETES_SERVICE_HOST"], "10.96.0.1");
        assert_eq!(env["KUBERNETES_SERVICE_PORT_HTTPS"], "443");
        assert!(
            !env.contains_key("X_SERVICE_HOST"),
            "other namespace leaked"
        );
        assert!(
            !env.contains_key("H_SERVICE_HOST"),
            "headless service has no host"
        );
        // From another namespace only the master service is visible.
        let env: HashMap<_, _> = service_env("other", &[&redis, &other_ns, &kube])
            .into_iter()
            .collect();
        assert!(env.contains_key("X_SERVICE_HOST") && env.contains_key("KUBERNETES_PORT"));
        assert!(!env.contains_key("REDIS_MASTER_SERVICE_HOST"));
    }

    #[test]
    fn multi_port_udp_service_gets_per_port_variables() {
        let dns = svc(
            "default",
            "dns",
            "10.0.0.10",
            json!([{"port": 53, "protocol": "UDP", "name": "dns"}, {"port": 53, "protocol": "TCP", "name": "dns-tcp"}]),
        );
        let env: HashMap<_, _> = service_env("default", &[&dns]).into_iter().collect();
        assert_eq!(env["DNS_PORT"], "udp://10.0.0.10:53");
        assert_eq!(env["DNS_PORT_53_UDP_PROTO"], "udp");
        assert_eq!(env["DNS_PORT_53_TCP"], "tcp://10.0.0.10:53");
        assert_eq!(env["DNS_SERVICE_PORT_DNS_TCP"], "53");
    }

    #[test]
    fn spec_env_resolves_field_refs_secrets_and_expansion() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns1", "uid": "u1", "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{
                "name": "c",
                "env": [
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "POD_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                    {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                    {"name": "PASS", "valueFrom": {"secretKeyRef": {"name": "s", "key": "password"}}},
                    {"name": "GREETING", "value": "hi $(POD_NAME) at $(POD_IP) $(NOPE) $$(POD_NAME)"},
                    {"name": "A_SERVICE_HOST", "value": "overridden"},
                ],
            }]},
        }))
        .expect("pod literal");
        let src = Sources {
            pod_ip: "10.244.1.5".into(),
            host_ip: "198.18.0.11".into(),
            node_name: "n1".into(),
            secrets: HashMap::from([(
                "s".to_owned(),
                BTreeMap::from([("password".to_owned(), "hunter2".to_owned())]),
            )]),
            config_maps: HashMap::new(),
        };
        let c = &pod.spec.as_ref().expect("spec").containers[0];
        let env: HashMap<_, _> = container_env(
            &pod,
            c,
            &[("A_SERVICE_HOST".into(), "10.0.0.1".into())],
            &src,
        )
        .into_iter()
        .collect();
        assert_eq!(env["POD_NAME"], "p");
        assert_eq!(env["POD_NS"], "ns1");
        assert_eq!(env["POD_IP"], "10.244.1.5");
        assert_eq!(env["APP"], "web");
        assert_eq!(env["PASS"], "hunter2");
        assert_eq!(env["GREETING"], "hi p at 10.244.1.5 $(NOPE) $(POD_NAME)");
        assert_eq!(env["A_SERVICE_HOST"], "overridden");
    }
}
