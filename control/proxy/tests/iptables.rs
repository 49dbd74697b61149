//! The iptables mode: rendered rules against golden files (kube-proxy's shapes), chain-name
//! hashes against kube-proxy's test vectors, and (privileged) the mode's syncs, canary and
//! cleanup against the real iptables tools of both backends inside throwaway namespaces.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    sync::Arc,
};

mod common;

use common::{NODE, fixtures, golden};
use xkube_proxy::{
    mode::{
        NodeInfo, Proxier,
        iptables::{
            IptablesOptions, IptablesProxier,
            exec::{Backend, BackendChoice, Iptables},
            rules::{
                FullSyncExtras, RenderContext, ServiceRules, endpoint_chain, port_chain,
                render_service, restore_input,
            },
        },
    },
    model::{ServiceModel, ServiceName},
};

fn ctx() -> RenderContext {
    RenderContext {
        node_name: NODE.into(),
        node_ip: Ipv4Addr::new(198, 18, 0, 11),
        pod_cidr: Some("10.180.0.0/24".parse().expect("cidr")),
        cluster_cidr: "10.180.0.0/16".parse().expect("cidr"),
        masquerade_all: false,
        large_cluster: false,
    }
}

fn rendered(models: &[ServiceModel], ctx: &RenderContext) -> BTreeMap<ServiceName, ServiceRules> {
    models
        .iter()
        .map(|m| (m.name.clone(), render_service(m, ctx)))
        .collect()
}

#[test]
fn chain_names_match_kube_proxys_test_vectors() {
    assert_eq!(
        port_chain("KUBE-SVC-", "ns1/svc1:p80", "tcp"),
        "KUBE-SVC-XPGD46QRK7WJZT7O"
    );
    assert_eq!(
        endpoint_chain("ns1/svc1:p80", "tcp", "10.180.0.1:80"),
        "KUBE-SEP-SXIVWICOYRO3J4NJ"
    );
}

#[test]
fn full_sync_input_matches_the_golden_file() {
    let input = restore_input(
        &rendered(&fixtures(), &ctx()),
        None,
        &BTreeSet::new(),
        &FullSyncExtras::default(),
    );
    golden("iptables", "full.txt", &input);
}

#[test]
fn partial_sync_rewrites_the_changed_service_only_and_deletes_its_stale_chains() {
    let mut models = fixtures();
    let before = rendered(&models, &ctx());
    // svc3 loses an endpoint; the others are unchanged.
    let svc3 = models
        .iter_mut()
        .find(|m| m.name.name == "svc3")
        .expect("svc3");
    svc3.ports[0]
        .endpoints
        .retain(|e| e.addr != Ipv4Addr::new(10, 180, 2, 3));
    let name = svc3.name.clone();
    let after = rendered(&models, &ctx());
    let old: BTreeSet<String> = before[&name].chains().cloned().collect();
    let new: BTreeSet<String> = after[&name].chains().cloned().collect();
    let stale: BTreeSet<String> = old.difference(&new).cloned().collect();
    assert_eq!(stale.len(), 1, "one endpoint chain goes");
    let input = restore_input(
        &after,
        Some(&[name].into()),
        &stale,
        &FullSyncExtras::default(),
    );
    golden("iptables", "partial.txt", &input);
}

#[test]
fn masquerade_all_marks_every_cluster_ip_connection() {
    let mut c = ctx();
    c.masquerade_all = true;
    let r = rendered(&fixtures()[..1], &c);
    let input = restore_input(&r, None, &BTreeSet::new(), &FullSyncExtras::default());
    assert!(input.contains(
        "-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment \"ns1/svc1:p80 cluster IP\" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-MARK-MASQ\n"
    ));
}

#[test]
fn a_full_sync_adds_the_canaries_and_the_missing_jumps() {
    let r = rendered(&fixtures()[..1], &ctx());
    let extras = FullSyncExtras {
        canary: true,
        jumps: xkube_proxy::mode::iptables::rules::JUMP_RULES.to_vec(),
    };
    let input = restore_input(&r, None, &BTreeSet::new(), &extras);
    assert!(input.starts_with("*mangle\n:KUBE-PROXY-CANARY - [0:0]\nCOMMIT\n*filter\n"));
    for want in [
        "-I INPUT 1 -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES\n",
        "-I FORWARD 1 -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n",
        "-I PREROUTING 1 -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
        "-I POSTROUTING 1 -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n",
    ] {
        assert!(input.contains(want), "no {want:?} in\n{input}");
    }
    assert_eq!(input.matches(":KUBE-PROXY-CANARY - [0:0]").count(), 3);
}

#[test]
fn large_clusters_leave_out_per_endpoint_comments() {
    let models = fixtures();
    let mut c = ctx();
    c.large_cluster = true;
    let r = rendered(&models[..1], &c);
    let input = restore_input(&r, None, &BTreeSet::new(), &FullSyncExtras::default());
    assert!(input.contains("-A KUBE-SVC-XPGD46QRK7WJZT7O -j KUBE-SEP-SXIVWICOYRO3J4NJ\n"));
    assert!(input.contains("-A KUBE-SEP-SXIVWICOYRO3J4NJ -s 10.180.0.1 -j KUBE-MARK-MASQ\n"));
    assert!(
        input.contains("\"ns1/svc1:p80 cluster IP\""),
        "service comments stay"
    );
}

// ---- privileged: the real tools -------------------------------------------------------

fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "iptables tests need root; CI runs them as root"
    );
}

fn node() -> NodeInfo {
    let c = ctx();
    NodeInfo {
        name: c.node_name,
        addrs: vec![c.node_ip],
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

/// `-A` lines of `iptables-save` in `table` that belong to this mode (KUBE-*, and jumps to it).
fn kube_lines(ipt: &Iptables, table: &str) -> Vec<String> {
    ipt.save(Some(table))
        .expect("iptables-save")
        .lines()
        .filter(|l| l.contains("KUBE-"))
        .map(str::to_owned)
        .collect()
}

fn each_backend(f: impl Fn(Backend) + Sync) {
    require_root();
    for b in [Backend::Legacy, Backend::Nft] {
        let ns = xkube_netns::NetNs::unique("xkipt").expect("namespace");
        ns.run(|| f(b)).expect("enter namespace");
    }
}

#[test]
fn privileged_the_golden_input_loads_in_both_backends_and_reads_back() {
    each_backend(|b| {
        let ipt = Iptables::new(b);
        let input = restore_input(
            &rendered(&fixtures(), &ctx()),
            None,
            &BTreeSet::new(),
            &FullSyncExtras::default(),
        );
        ipt.restore(&input)
            .unwrap_or_else(|e| panic!("{b:?}: restore: {e}"));
        let nat = kube_lines(&ipt, "nat");
        // What iptables-save prints: the seed's shapes (SEEDS.md B).
        for want in [
            "-A KUBE-SERVICES -d 172.30.0.41/32 -p tcp -m comment --comment \"ns1/svc1:p80 cluster IP\" -m tcp --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O",
            "-A KUBE-SEP-SXIVWICOYRO3J4NJ -s 10.180.0.1/32 -m comment --comment \"ns1/svc1:p80\" -j KUBE-MARK-MASQ",
            "-A KUBE-SEP-SXIVWICOYRO3J4NJ -p tcp -m comment --comment \"ns1/svc1:p80\" -m tcp -j DNAT --to-destination 10.180.0.1:80",
            "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000",
            "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully",
        ] {
            assert!(
                nat.iter().any(|l| l == want),
                "{b:?}: no {want:?} in\n{}",
                nat.join("\n")
            );
        }
        let probabilities = nat
            .iter()
            .filter(|l| l.contains("-m statistic --mode random --probability"))
            .count();
        assert_eq!(
            probabilities,
            1 + 2 + 1,
            "{b:?}: svc2 (1), svc3 (2), svc4 (1)"
        );
    });
}

#[test]
fn privileged_syncs_canary_and_cleanup_on_both_backends() {
    each_backend(|b| {
        let opts = IptablesOptions {
            iptables_backend: match b {
                Backend::Legacy => BackendChoice::Legacy,
                Backend::Nft => BackendChoice::Nft,
            },
            masquerade_all: false,
        };
        let ipt = Iptables::new(b);
        // Somebody else's rules stay (Docker's, the kubelet's).
        ipt.restore(
            "*nat\n:DOCKER - [0:0]\n-A DOCKER -i docker0 -j RETURN\n\
             -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER\nCOMMIT\n\
             *filter\n:KUBE-FIREWALL - [0:0]\n-A KUBE-FIREWALL -d 127.0.0.0/8 -j DROP\nCOMMIT\n\
             *mangle\n:KUBE-KUBELET-CANARY - [0:0]\nCOMMIT\n",
        )
        .expect("foreign rules");
        let mut p = IptablesProxier::new(&opts, &node()).expect("proxier");
        assert_eq!(p.backend(), b);
        let mut models = fixtures();
        p.sync_full(&models_map(&models)).expect("full sync");
        let full = kube_lines(&ipt, "nat");
        // The jumps from the built-in chains, once each, also after another full sync.
        p.sync_full(&models_map(&models)).expect("second full sync");
        let jumps = |t: &str| {
            kube_lines(&ipt, t)
                .into_iter()
                .filter(|l| {
                    [
                        "-A INPUT ",
                        "-A OUTPUT ",
                        "-A FORWARD ",
                        "-A PREROUTING ",
                        "-A POSTROUTING ",
                    ]
                    .iter()
                    .any(|c| l.starts_with(c))
                })
                .count()
        };
        assert_eq!(jumps("nat"), 3, "{b:?}: nat jumps");
        assert_eq!(jumps("filter"), 9, "{b:?}: filter jumps");
        assert_eq!(
            kube_lines(&ipt, "nat"),
            full,
            "{b:?}: a full sync is idempotent"
        );

        // A partial sync: svc3 loses an endpoint, svc1 goes away.
        let svc3 = models
            .iter_mut()
            .find(|m| m.name.name == "svc3")
            .expect("svc3");
        svc3.ports[0]
            .endpoints
            .retain(|e| e.addr != Ipv4Addr::new(10, 180, 2, 3));
        let changed = vec![
            (svc3.name.clone(), Some(Arc::new(svc3.clone()))),
            (ServiceName::new("ns1", "svc1"), None),
        ];
        p.sync_changed(&changed).expect("partial sync");
        let nat = kube_lines(&ipt, "nat");
        assert!(
            !nat.iter().any(|l| l.contains("KUBE-SVC-XPGD46QRK7WJZT7O")),
            "{b:?}: svc1's chain deleted"
        );
        assert!(
            !nat.iter().any(|l| l.contains("10.180.2.3")),
            "{b:?}: the endpoint is gone"
        );
        assert!(
            nat.iter().any(|l| l.contains("10.180.1.3:80")),
            "{b:?}: the others stay"
        );
        let chains = ipt.save(Some("nat")).expect("save");
        assert!(
            !chains.contains(":KUBE-SVC-XPGD46QRK7WJZT7O"),
            "{b:?}: no stale chain left"
        );

        // The canary: flushed rules are back after housekeeping.
        ipt.restore("*mangle\n:KUBE-PROXY-CANARY - [0:0]\n-X KUBE-PROXY-CANARY\nCOMMIT\n")
            .expect("delete the canary");
        p.housekeeping().expect("housekeeping");
        assert!(
            ipt.chain_exists("mangle", "KUBE-PROXY-CANARY")
                .expect("check"),
            "{b:?}: canary back"
        );

        // A CNI plugin marks with our KUBE-MARK-MASQ: that chain stays for it.
        ipt.restore("*nat\n:CNI-HOSTPORT-SETMARK - [0:0]\n-A CNI-HOSTPORT-SETMARK -j KUBE-MARK-MASQ\nCOMMIT\n")
            .expect("a CNI rule");
        // Cleanup removes everything of ours and nothing else.
        xkube_proxy::mode::cleanup_all(&xkube_proxy::mode::CleanupContext {
            node_name: NODE.into(),
            bpf_root: std::env::temp_dir().join("xkipt-none"),
        })
        .expect("cleanup");
        let others = ["KUBE-FIREWALL", "KUBE-KUBELET-CANARY", "KUBE-MARK-MASQ"];
        for t in ["nat", "filter", "mangle"] {
            let save = ipt.save(Some(t)).expect("save");
            let left: Vec<&str> = save
                .lines()
                .filter(|l| l.contains("KUBE-") && !others.iter().any(|o| l.contains(o)))
                .collect();
            assert!(left.is_empty(), "{b:?} {t}: left {left:?}");
        }
        let filter = ipt.save(Some("filter")).expect("save");
        assert!(
            filter.contains("-A KUBE-FIREWALL -d 127.0.0.0/8 -j DROP"),
            "{b:?}: the kubelet's chain stays"
        );
        let mangle = ipt.save(Some("mangle")).expect("save");
        assert!(
            mangle.contains(":KUBE-KUBELET-CANARY"),
            "{b:?}: the kubelet's canary stays"
        );
        let nat = ipt.save(Some("nat")).expect("save");
        assert!(
            nat.contains("-A DOCKER -i docker0 -j RETURN"),
            "{b:?}: Docker's rules stay"
        );
        assert!(
            nat.contains("-A CNI-HOSTPORT-SETMARK -j KUBE-MARK-MASQ")
                && nat.contains("-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000"),
            "{b:?}: a chain another program uses stays"
        );
    });
}
