//! A pod's `/etc/resolv.conf`, as Kubernetes' kubelet builds it (pkg/kubelet/network/dns):
//!
//! - `ClusterFirst` (the default): the cluster DNS (`--cluster-dns`), searches
//!   `<ns>.svc.<domain> svc.<domain> <domain>` then the node's, `options ndots:5`. A
//!   host-network pod gets `Default` instead, and so does every pod while the kubelet has no
//!   `--cluster-dns`.
//! - `ClusterFirstWithHostNet`: `ClusterFirst`, host network or not.
//! - `Default`: the node's resolv.conf (`--resolv-conf`).
//! - `None`: nothing but the pod's `dnsConfig`.
//!
//! The pod's `dnsConfig` is appended: nameservers and searches after the policy's (duplicates
//! dropped), options merged by name (the pod's value wins). At most 3 nameservers (the libc
//! limit; Kubernetes drops the rest too).
//!
//! The file is written per pod ([`write`]) and bind-mounted on `/etc/resolv.conf` in every
//! container by both runtimes (the process runtime in the container's own mount namespace;
//! Docker takes a user bind on `/etc/resolv.conf` over the file it would otherwise manage).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;

use crate::error::{Result, io};

/// Where containers find the file.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";
/// glibc reads no more nameservers than this.
pub const MAX_NAMESERVERS: usize = 3;

/// The parts of a resolv.conf.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvConf {
    pub nameservers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

impl ResolvConf {
    /// Parses resolv.conf text (`nameserver`, `search`/`domain`, `options`; the last `search`
    /// or `domain` line wins, as in glibc).
    pub fn parse(text: &str) -> Self {
        let mut rc = ResolvConf::default();
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or("");
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => rc.nameservers.extend(words.next().map(str::to_string)),
                Some("search") | Some("domain") => {
                    rc.searches = words.map(str::to_string).collect();
                }
                Some("options") => rc.options.extend(words.map(str::to_string)),
                _ => {}
            }
        }
        rc
    }

    /// The file's text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for n in &self.nameservers {
            out.push_str(&format!("nameserver {n}\n"));
        }
        if !self.searches.is_empty() {
            out.push_str(&format!("search {}\n", self.searches.join(" ")));
        }
        if !self.options.is_empty() {
            out.push_str(&format!("options {}\n", self.options.join(" ")));
        }
        out
    }
}

/// The kubelet's DNS settings.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// `--cluster-dns`.
    pub cluster_dns: Vec<IpAddr>,
    /// `--cluster-domain`.
    pub cluster_domain: String,
    /// `--resolv-conf` (empty: the node has no resolver configuration to give pods).
    pub resolv_conf: Option<PathBuf>,
}

fn push_unique(into: &mut Vec<String>, items: impl IntoIterator<Item = String>) {
    for i in items {
        if !into.contains(&i) {
            into.push(i);
        }
    }
}

fn option_name(o: &str) -> &str {
    o.split(':').next().unwrap_or(o)
}

/// The resolv.conf of `pod` with these settings and the node's resolver configuration
/// `host` (pure).
pub fn for_pod(pod: &Pod, settings: &Settings, host: &ResolvConf) -> ResolvConf {
    let spec = pod.spec.as_ref();
    let host_network = spec.and_then(|s| s.host_network) == Some(true);
    let policy = spec
        .and_then(|s| s.dns_policy.as_deref())
        .unwrap_or("ClusterFirst");
    let cluster = match policy {
        "None" => None,
        "ClusterFirstWithHostNet" => Some(true),
        "ClusterFirst" if !host_network => Some(true),
        // Default, and ClusterFirst on the host network.
        _ => Some(false),
    };
    let cluster = cluster.map(|c| {
        if c && settings.cluster_dns.is_empty() {
            tracing::debug!(
                pod = pod.metadata.name.as_deref().unwrap_or(""),
                "no --cluster-dns: the pod gets the node's resolv.conf (Default)"
            );
            false
        } else {
            c
        }
    });
    let mut rc = match cluster {
        None => ResolvConf::default(),
        Some(false) => host.clone(),
        Some(true) => {
            let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
            let d = settings.cluster_domain.trim_end_matches('.');
            let mut searches = vec![format!("{ns}.svc.{d}"), format!("svc.{d}"), d.to_string()];
            push_unique(&mut searches, host.searches.iter().cloned());
            ResolvConf {
                nameservers: settings.cluster_dns.iter().map(IpAddr::to_string).collect(),
                searches,
                options: vec!["ndots:5".into()],
            }
        }
    };
    if let Some(cfg) = spec.and_then(|s| s.dns_config.as_ref()) {
        push_unique(
            &mut rc.nameservers,
            cfg.nameservers.iter().flatten().cloned(),
        );
        push_unique(&mut rc.searches, cfg.searches.iter().flatten().cloned());
        for o in cfg.options.iter().flatten() {
            let Some(name) = o.name.as_deref().filter(|n| !n.is_empty()) else {
                continue;
            };
            let opt = match o.value.as_deref() {
                Some(v) => format!("{name}:{v}"),
                None => name.to_string(),
            };
            match rc.options.iter_mut().find(|x| option_name(x) == name) {
                Some(x) => *x = opt,
                None => rc.options.push(opt),
            }
        }
    }
    rc.nameservers.truncate(MAX_NAMESERVERS);
    rc
}

/// The node's resolver configuration (`settings.resolv_conf`; empty when unset or
/// unreadable, as Kubernetes treats a missing file).
pub fn host(settings: &Settings) -> ResolvConf {
    let Some(path) = settings.resolv_conf.as_deref() else {
        return ResolvConf::default();
    };
    match std::fs::read_to_string(path) {
        Ok(t) => ResolvConf::parse(&t),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "reading the node's resolv.conf");
            ResolvConf::default()
        }
    }
}

/// Writes the pod's resolv.conf into its pod dir; returns the file.
pub fn write(pod_dir: &Path, rc: &ResolvConf) -> Result<PathBuf> {
    let p = pod_dir.join("resolv.conf");
    std::fs::create_dir_all(pod_dir).map_err(io("create directory", pod_dir))?;
    std::fs::write(&p, rc.render()).map_err(io("write", &p))?;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "team"},
            "spec": spec,
        }))
        .expect("pod literal")
    }

    fn settings() -> Settings {
        Settings {
            cluster_dns: vec!["10.96.0.10".parse().expect("ip")],
            cluster_domain: "cluster.local".into(),
            resolv_conf: None,
        }
    }

    fn node() -> ResolvConf {
        ResolvConf::parse(
            "# generated\nnameserver 192.0.2.53\nnameserver 192.0.2.54 ; second\nsearch corp.example\noptions edns0 timeout:2\n",
        )
    }

    #[test]
    fn cluster_first_is_the_default_with_the_namespace_search_path() {
        let rc = for_pod(&pod(json!({"containers": []})), &settings(), &node());
        assert_eq!(
            rc.render(),
            "nameserver 10.96.0.10\n\
             search team.svc.cluster.local svc.cluster.local cluster.local corp.example\n\
             options ndots:5\n"
        );
    }

    #[test]
    fn host_network_pods_fall_back_to_default_unless_cluster_first_with_host_net() {
        let hn = pod(json!({"hostNetwork": true, "containers": []}));
        assert_eq!(for_pod(&hn, &settings(), &node()), node());
        let mut with = hn.clone();
        with.spec.as_mut().expect("spec").dns_policy = Some("ClusterFirstWithHostNet".into());
        assert_eq!(
            for_pod(&with, &settings(), &node()).nameservers,
            vec!["10.96.0.10"]
        );
    }

    #[test]
    fn default_policy_and_a_kubelet_without_cluster_dns_give_the_nodes_file() {
        let p = pod(json!({"dnsPolicy": "Default", "containers": []}));
        assert_eq!(for_pod(&p, &settings(), &node()), node());
        let no_dns = Settings {
            cluster_dns: Vec::new(),
            ..settings()
        };
        assert_eq!(
            for_pod(&pod(json!({"containers": []})), &no_dns, &node()),
            node()
        );
    }

    #[test]
    fn none_takes_only_dns_config() {
        let p = pod(json!({"dnsPolicy": "None", "containers": [],
            "dnsConfig": {"nameservers": ["1.2.3.4"], "searches": ["a.example"],
                          "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}}));
        assert_eq!(
            for_pod(&p, &settings(), &node()).render(),
            "nameserver 1.2.3.4\nsearch a.example\noptions ndots:2 edns0\n"
        );
    }

    #[test]
    fn dns_config_is_appended_and_options_merge_by_name() {
        let p = pod(json!({"containers": [],
            "dnsConfig": {"nameservers": ["10.96.0.10", "1.1.1.1", "2.2.2.2", "3.3.3.3"],
                          "searches": ["svc.cluster.local", "x.example"],
                          "options": [{"name": "ndots", "value": "1"}, {"name": "rotate"}]}}));
        let rc = for_pod(&p, &settings(), &node());
        assert_eq!(
            rc.nameservers,
            vec!["10.96.0.10", "1.1.1.1", "2.2.2.2"],
            "duplicates dropped, at most three"
        );
        assert_eq!(
            rc.searches,
            vec![
                "team.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local",
                "corp.example",
                "x.example"
            ]
        );
        assert_eq!(rc.options, vec!["ndots:1", "rotate"]);
    }

    #[test]
    fn parse_keeps_the_last_search_line_and_skips_comments() {
        let rc =
            ResolvConf::parse("search a b\ndomain c\n; nameserver 9.9.9.9\nnameserver 8.8.8.8\n");
        assert_eq!(rc.searches, vec!["c"]);
        assert_eq!(rc.nameservers, vec!["8.8.8.8"]);
        assert!(ResolvConf::default().render().is_empty());
    }
}
