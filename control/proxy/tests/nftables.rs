//! The nftables mode: the rendered transactions against golden files (kube-proxy's layout)
//! for the iptables mode's fixture services, chain names against kube-proxy's examples, and
//! (privileged) the transactions loaded by the real `nft` inside throwaway namespaces, the
//! proxier's syncs, table repair and cleanup.

mod common;

use std::{collections::BTreeMap, net::Ipv4Addr, process::Command, sync::Arc};

use common::{NODE, fixtures, golden};
use xkube_proxy::{
    mode::{
        CleanupContext, NodeInfo, Proxier,
        nftables::{
            self, NftablesProxier,
            rules::{
                Change, RenderContext, ServiceNft, full, hash_and_truncate, partial, render_service,
            },
        },
    },
    model::{ServiceModel, ServiceName},
};

fn ctx() -> RenderContext {
    RenderContext {
        node_name: NODE.into(),
        node_ips: vec![Ipv4Addr::new(198, 18, 0, 11)],
        pod_cidr: Some("10.180.0.0/24".parse().expect("cidr")),
        cluster_cidr: "10.180.0.0/16".parse().expect("cidr"),
        masquerade_all: false,
    }
}

fn rendered(models: &[ServiceModel], ctx: &RenderContext) -> BTreeMap<ServiceName, ServiceNft> {
    models
        .iter()
        .map(|m| (m.name.clone(), render_service(m, ctx)))
        .collect()
}

#[test]
fn chain_names_match_kube_proxys_examples() {
    assert_eq!(
        format!("service-{}", hash_and_truncate("ns1/svc1/tcp/p80")),
        "service-ULMVA6XW-ns1/svc1/tcp/p80"
    );
    assert_eq!(
        format!(
            "endpoint-{}",
            hash_and_truncate("ns1/svc1/tcp/p80__10.180.0.1/80")
        ),
        "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
    );
    // Names longer than nftables allows are cut with an ellipsis.
    let long = hash_and_truncate(&"x".repeat(300));
    assert_eq!(long.len(), 256);
    assert!(long.ends_with("..."));
}

#[test]
fn full_transaction_matches_the_golden_file() {
    golden(
        "nftables",
        "full.nft",
        &full(&rendered(&fixtures(), &ctx()), &ctx()),
    );
}

/// The changes of `names` from `before` to `after`.
fn changes_of<'a>(
    before: &'a BTreeMap<ServiceName, ServiceNft>,
    after: &'a BTreeMap<ServiceName, ServiceNft>,
    names: &[ServiceName],
) -> Vec<Change<'a>> {
    names
        .iter()
        .map(|n| Change {
            old: before.get(n),
            new: after.get(n),
        })
        .collect()
}

/// svc3 loses an endpoint, svc1 goes away, svc6 gets its endpoint ready.
fn changed_models() -> (Vec<ServiceModel>, Vec<ServiceName>) {
    let mut models = fixtures();
    for m in &mut models {
        match m.name.name.as_str() {
            "svc3" => m.ports[0]
                .endpoints
                .retain(|e| e.addr != Ipv4Addr::new(10, 180, 2, 3)),
            "svc6" => m.ports[0].endpoints[0].ready = true,
            _ => {}
        }
    }
    models.retain(|m| m.name.name != "svc1");
    let names = ["svc1", "svc3", "svc6"]
        .iter()
        .map(|n| ServiceName::new(format!("ns{}", &n[3..]), *n))
        .collect();
    (models, names)
}

#[test]
fn partial_transaction_touches_the_changed_services_only() {
    let before = rendered(&fixtures(), &ctx());
    let (models, names) = changed_models();
    let after = rendered(&models, &ctx());
    let changes = changes_of(&before, &after, &names);
    let tx = partial(&changes);
    golden("nftables", "partial.nft", &tx);
    // Nothing of an unchanged service.
    assert!(!tx.contains("svc2"), "{tx}");
    // Unchanged services and no change at all: an empty transaction.
    let same: Vec<Change<'_>> = before
        .values()
        .map(|s| Change {
            old: Some(s),
            new: Some(s),
        })
        .collect();
    assert_eq!(partial(&same), "");
}

#[test]
fn masquerade_all_marks_every_cluster_ip_connection() {
    let mut c = ctx();
    c.masquerade_all = true;
    let r = render_service(&fixtures()[0], &c);
    let svc = r
        .chains
        .iter()
        .find(|c| c.name.starts_with("service-"))
        .expect("service chain");
    assert_eq!(
        svc.rules[0],
        "ip daddr 172.30.0.41 tcp dport 80 jump mark-for-masquerade"
    );
}

// ---- privileged: the real nft ------------------------------------------------------------

fn in_namespace(f: impl FnOnce() + Send) {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "nftables tests need root; CI runs them as root"
    );
    assert!(
        nftables::available(),
        "nft is not installed (cargo xtask setup)"
    );
    let ns = xkube_netns::NetNs::unique("xknft").expect("namespace");
    ns.run(f).expect("enter namespace");
}

fn list() -> String {
    let out = Command::new("nft")
        .args(["list", "table", "ip", "kube-proxy"])
        .output()
        .expect("nft list");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The sorted lines of a listing.
fn lines(table: &str) -> Vec<String> {
    let mut l: Vec<String> = table.lines().map(|l| l.trim().to_owned()).collect();
    l.sort();
    l
}

fn node() -> NodeInfo {
    let c = ctx();
    NodeInfo {
        name: c.node_name,
        addrs: c.node_ips,
        pod_cidr: c.pod_cidr,
        cluster_cidr: c.cluster_cidr,
    }
}

fn models_map(models: &[ServiceModel]) -> BTreeMap<ServiceName, Arc<ServiceModel>> {
    models
        .iter()
        .map(|m| (m.name.clone(), Arc::new(m.clone())))
        .collect()
}

#[test]
fn privileged_the_golden_transactions_load_and_read_back() {
    in_namespace(|| {
        nftables::apply(&full(&rendered(&fixtures(), &ctx()), &ctx())).expect("full");
        let table = list();
        for want in [
            "chain service-ULMVA6XW-ns1/svc1/tcp/p80 {",
            "chain endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 {",
            "ip daddr . meta l4proto . th dport vmap @service-ips",
            "ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports",
            "meta l4proto tcp dnat to 10.180.0.1:80",
            "type filter hook prerouting priority dstnat - 10; policy accept;",
            "type nat hook postrouting priority srcnat; policy accept;",
            "masquerade fully-random",
            "numgen random mod 3 vmap {",
            "172.30.0.41 . tcp . 80 : goto service-ULMVA6XW-ns1/svc1/tcp/p80",
        ] {
            assert!(table.contains(want), "no {want:?} in\n{table}");
        }
        // The partial transaction applies on top of the full one.
        let before = rendered(&fixtures(), &ctx());
        let (models, names) = changed_models();
        let after = rendered(&models, &ctx());
        let changes = changes_of(&before, &after, &names);
        nftables::apply(&partial(&changes)).expect("partial");
        let table = list();
        assert!(!table.contains("ns1/svc1"), "svc1 removed:\n{table}");
        assert!(!table.contains("10.180.2.3"), "the endpoint removed");
        assert!(table.contains("10.180.1.3:80"), "the others stay");
        // The same table as a full transaction of the new state writes (chains are listed
        // in creation order: compare the lines).
        nftables::apply(&full(&after, &ctx())).expect("full again");
        assert_eq!(lines(&list()), lines(&table), "partial == full");
    });
}

#[test]
fn privileged_syncs_repair_and_cleanup() {
    in_namespace(|| {
        // Somebody else's table stays.
        nftables::apply("add table ip other\nadd chain ip other c\n").expect("foreign");
        let mut p = NftablesProxier::new(false, &node()).expect("proxier");
        let models = fixtures();
        p.sync_full(&models_map(&models)).expect("full sync");
        let first = list();
        p.sync_full(&models_map(&models)).expect("second full sync");
        assert_eq!(lines(&list()), lines(&first), "a full sync is idempotent");
        let (changed, names) = changed_models();
        let by_name = models_map(&changed);
        let delta: Vec<(ServiceName, Option<Arc<ServiceModel>>)> = names
            .iter()
            .map(|n| (n.clone(), by_name.get(n).cloned()))
            .collect();
        p.sync_changed(&delta).expect("partial sync");
        let table = list();
        assert!(!table.contains("ns1/svc1"), "{table}");
        // The table deleted by hand: housekeeping recreates it.
        nftables::apply("delete table ip kube-proxy\n").expect("delete");
        p.housekeeping().expect("housekeeping");
        assert_eq!(lines(&list()), lines(&table), "repaired");
        let metrics = {
            let mut s = String::new();
            p.metrics().render(&mut s);
            s
        };
        assert!(
            metrics.contains("xkube_proxy_nftables_table_resyncs_total 1"),
            "{metrics}"
        );
        let ctx = CleanupContext {
            node_name: NODE.into(),
            bpf_root: std::env::temp_dir(),
        };
        nftables::cleanup(&ctx).expect("cleanup");
        nftables::cleanup(&ctx).expect("cleanup is idempotent");
        assert!(!nftables::table_exists().expect("list"), "table gone");
        let out = Command::new("nft")
            .args(["list", "tables"])
            .output()
            .expect("nft");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("table ip other"),
            "foreign table kept"
        );
    });
}
