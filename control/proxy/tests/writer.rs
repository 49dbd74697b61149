//! Privileged: the desired-state writer against real kernel maps. The eBPF object is loaded
//! (which creates every map; programs are not loaded), desired states computed from
//! Service/Endpoints objects are applied, and the maps are read back after every step; a
//! restart reopens pinned maps and must find nothing to do.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use aya::{Ebpf, EbpfLoader};
use k8s_openapi::api::core::v1::{Endpoints, Service};
use serde_json::json;
use xkube_common::lb::{
    AffinityKey, AffinityValue, BACKEND_F_LOCAL, CT_DIR_FORWARD, CT_DIR_REPLY, CT_F_FIN_FORWARD,
    CT_F_FIN_REPLY, CT_F_RST, CtKey, CtValue, IPPROTO_TCP, IPPROTO_UDP, SCOPE_DEFAULT,
    SVC_F_CLUSTER_IP, ServiceKey, SockRevNatKey, SockRevNatValue,
};
use xkube_proxy::dataplane::{
    Desired, DesiredState, IdleTimeouts, Ids, Maps, NodeContext, Writer, WriterConfig, apply,
    desired::{LB_ALGORITHM_ANNOTATION, ne},
    gc, ktime_now_ns, plan, read_actual,
    writer::MAP_NAMES,
};

fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "eBPF map tests need root (CI runs them as root)"
    );
}

fn load() -> Ebpf {
    EbpfLoader::new()
        .load(xkube_proxy::ebpf::object())
        .unwrap_or_else(|e| panic!("loading the eBPF object (maps only): {e}"))
}

fn node() -> NodeContext {
    NodeContext {
        pod_cidr: Some("10.244.1.0/24".parse().unwrap_or_else(|e| panic!("{e}"))),
        hairpin_addr: Ipv4Addr::new(10, 244, 1, 1),
        uplink_ifindex: 7,
        ..NodeContext::new("node-a", Ipv4Addr::new(198, 18, 0, 11))
    }
}

fn service(v: serde_json::Value) -> Service {
    serde_json::from_value(v).unwrap_or_else(|e| panic!("test Service: {e}"))
}

fn svc(name: &str, ip: &str) -> Service {
    service(json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"clusterIP": ip, "ports": [{"port": 80, "targetPort": 8080}]}
    }))
}

fn lb_svc() -> Service {
    service(json!({
        "metadata": {"name": "lb", "namespace": "default",
                     "annotations": {LB_ALGORITHM_ANNOTATION: "maglev"}},
        "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.50",
                 "externalTrafficPolicy": "Local", "externalIPs": ["198.18.5.1"],
                 "sessionAffinity": "ClientIP",
                 "ports": [{"name": "http", "port": 80, "nodePort": 30080},
                           {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053}]},
        "status": {"loadBalancer": {"ingress": [{"ip": "198.18.6.1"}]}}
    }))
}

fn eps(name: &str, ips: &[&str]) -> Endpoints {
    let addrs: Vec<_> = ips
        .iter()
        .map(|ip| {
            let node = if ip.starts_with("10.244.1.") {
                "node-a"
            } else {
                "node-b"
            };
            json!({"ip": ip, "nodeName": node})
        })
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default"},
        "subsets": [{"addresses": addrs, "ports": [
            {"name": "http", "port": 8080}, {"name": "dns", "port": 5353, "protocol": "UDP"},
            {"port": 8080}
        ]}]
    }))
    .unwrap_or_else(|e| panic!("test Endpoints: {e}"))
}

/// Applies the plan from what the maps hold to `want` and checks the kernel now holds exactly
/// `want`.
fn apply_and_check(maps: &mut Maps, want: &DesiredState, step: &str) {
    let before = read_actual(maps).unwrap_or_else(|e| panic!("{step}: read before: {e}"));
    let ops = plan(&before, want);
    apply(maps, &ops).unwrap_or_else(|e| panic!("{step}: apply {} ops: {e}", ops.len()));
    let after = read_actual(maps).unwrap_or_else(|e| panic!("{step}: read after: {e}"));
    assert_eq!(
        &after, want,
        "{step}: the kernel maps hold the desired state"
    );
    assert!(
        plan(&after, want).is_empty(),
        "{step}: nothing left to do after apply"
    );
    // Spot-check the raw kernel view of one frontend per service id.
    for (k, v) in want.services.iter().filter(|(k, _)| k.slot == 0) {
        let got = maps
            .services
            .get(k, 0)
            .unwrap_or_else(|e| panic!("{step}: kernel lookup of {k:?}: {e}"));
        assert_eq!(&got, v, "{step}: frontend {k:?}");
    }
}

fn cluster_ip_key(ip: [u8; 4], port: u16, proto: u8) -> ServiceKey {
    ServiceKey {
        addr: ne(Ipv4Addr::from(ip)),
        port: port.to_be(),
        proto,
        scope: SCOPE_DEFAULT,
        slot: 0,
        _pad: 0,
    }
}

#[test]
fn privileged_apply_keeps_kernel_maps_equal_to_desired_through_service_changes() {
    require_root();
    let mut ebpf = load();
    let mut maps = Maps::from_ebpf(&mut ebpf).unwrap_or_else(|e| panic!("maps: {e}"));
    let empty = read_actual(&maps).unwrap_or_else(|e| panic!("read fresh maps: {e}"));
    assert!(
        empty.services.is_empty() && empty.backends.is_empty(),
        "fresh maps are empty"
    );
    let mut ids = Ids::new();
    let node = node();

    // 1 service.
    let s1 = xkube_proxy::dataplane::desired(
        &[svc("a", "10.96.0.10")],
        &[eps("a", &["10.244.1.5", "10.244.2.5"])],
        &node,
        &mut ids,
    );
    apply_and_check(&mut maps, &s1, "one service");
    let fe = maps
        .services
        .get(&cluster_ip_key([10, 96, 0, 10], 80, IPPROTO_TCP), 0)
        .unwrap_or_else(|e| panic!("ClusterIP frontend in the kernel: {e}"));
    assert_eq!(fe.count, 2, "two backends");
    assert!(fe.flags & SVC_F_CLUSTER_IP != 0);
    let cfg = maps
        .node_config
        .get(&0, 0)
        .unwrap_or_else(|e| panic!("node config: {e}"));
    assert_eq!(
        cfg.node_addr.to_ne_bytes(),
        [198, 18, 0, 11],
        "node address on the wire"
    );
    assert_eq!(cfg.uplink_ifindex, 7);

    // 3 services, one of them LoadBalancer + Maglev + affinity + Local, TCP and UDP.
    let mut svcs = vec![svc("a", "10.96.0.10"), svc("b", "10.96.0.11"), lb_svc()];
    let mut all_eps = vec![
        eps("a", &["10.244.1.5", "10.244.2.5"]),
        eps("b", &["10.244.1.6"]),
        eps("lb", &["10.244.1.7", "10.244.2.7", "10.244.3.7"]),
    ];
    let s3 = xkube_proxy::dataplane::desired(&svcs, &all_eps, &node, &mut ids);
    apply_and_check(&mut maps, &s3, "three services");
    assert!(!s3.maglev.is_empty(), "the LB service has Maglev tables");
    let local = s3
        .backends
        .values()
        .filter(|b| b.flags & BACKEND_F_LOCAL != 0)
        .count();
    assert!(local >= 3, "node-a endpoints are local");

    // Endpoints added.
    all_eps[0] = eps(
        "a",
        &["10.244.1.5", "10.244.2.5", "10.244.2.6", "10.244.1.8"],
    );
    let s4 = xkube_proxy::dataplane::desired(&svcs, &all_eps, &node, &mut ids);
    let ops = plan(&s3, &s4);
    assert!(
        ops.len() <= 8,
        "two endpoints added: 2 backends, 2 slots, 1 frontend ({} ops)",
        ops.len()
    );
    apply_and_check(&mut maps, &s4, "endpoints added");

    // Endpoints removed (including from the Maglev service).
    all_eps[0] = eps("a", &["10.244.2.6"]);
    all_eps[2] = eps("lb", &["10.244.1.7", "10.244.3.7"]);
    let s5 = xkube_proxy::dataplane::desired(&svcs, &all_eps, &node, &mut ids);
    apply_and_check(&mut maps, &s5, "endpoints removed");

    // All endpoints of b removed: frontend stays with count 0.
    all_eps[1] = eps("b", &[]);
    let s6 = xkube_proxy::dataplane::desired(&svcs, &all_eps, &node, &mut ids);
    apply_and_check(&mut maps, &s6, "no endpoints");
    let fe = maps
        .services
        .get(&cluster_ip_key([10, 96, 0, 11], 80, IPPROTO_TCP), 0)
        .unwrap_or_else(|e| panic!("b's frontend stays: {e}"));
    assert_eq!(fe.count, 0, "count 0: the datapath rejects");

    // Service deleted.
    svcs.remove(2);
    all_eps.remove(2);
    let s7 = xkube_proxy::dataplane::desired(&svcs, &all_eps, &node, &mut ids);
    apply_and_check(&mut maps, &s7, "LB service deleted");
    assert!(s7.maglev.is_empty(), "its Maglev tables are gone");
    assert!(
        maps.services
            .get(&cluster_ip_key([10, 96, 0, 50], 53, IPPROTO_UDP), 0)
            .is_err(),
        "the UDP frontend is gone from the kernel"
    );

    // Everything deleted.
    let s8 = xkube_proxy::dataplane::desired(&[], &[], &node, &mut ids);
    apply_and_check(&mut maps, &s8, "all services deleted");
    assert!(s8.services.is_empty() && s8.backends.is_empty() && s8.revnat.is_empty());
}

/// A unique directory under /sys/fs/bpf, removed (with its pins) on drop, panics included.
struct PinDir(PathBuf);

impl PinDir {
    fn new() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = PathBuf::from(format!(
            "/sys/fs/bpf/xkube-test-writer-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("create {} (is bpffs mounted?): {e}", dir.display()));
        Self(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("removing {}: {e}", self.0.display());
        }
    }
}

fn load_pinned(dir: &Path) -> Ebpf {
    let mut loader = EbpfLoader::new();
    for name in MAP_NAMES {
        loader.map_pin_path(name, dir.join(name));
    }
    loader
        .load(xkube_proxy::ebpf::object())
        .unwrap_or_else(|e| panic!("loading with pinned maps: {e}"))
}

#[test]
fn privileged_restart_from_pinned_maps_rebuilds_ids_and_plans_nothing() {
    require_root();
    let pins = PinDir::new();
    let node = node();
    let svcs = vec![
        svc("a", "10.96.0.10"),
        svc("b", "10.96.0.11"),
        svc("c", "10.96.0.12"),
        lb_svc(),
    ];
    let all_eps = vec![
        eps("a", &["10.244.1.5", "10.244.2.5"]),
        eps("b", &["10.244.1.6", "10.244.2.9"]),
        eps("c", &["10.244.3.6"]),
        eps("lb", &["10.244.1.7", "10.244.2.7", "10.244.3.7"]),
    ];
    let written = {
        let mut ebpf = load_pinned(pins.path());
        let mut maps = Maps::from_ebpf(&mut ebpf).unwrap_or_else(|e| panic!("maps: {e}"));
        let mut ids = Ids::new();
        // Churn first, so the ids in the maps are not simply 1..n in object order.
        let _ = xkube_proxy::dataplane::desired(&svcs[2..], &all_eps, &node, &mut ids);
        let _ = xkube_proxy::dataplane::desired(&svcs[1..], &all_eps[2..], &node, &mut ids);
        let state = xkube_proxy::dataplane::desired(&svcs, &all_eps, &node, &mut ids);
        apply_and_check(&mut maps, &state, "before restart");
        state
        // The agent "exits": object and map handles dropped; only the pins keep the maps.
    };
    for name in MAP_NAMES {
        assert!(
            pins.path().join(name).exists(),
            "{name} is pinned and survives the agent"
        );
    }

    let maps = Maps::from_pins(pins.path()).unwrap_or_else(|e| panic!("reopen pins: {e}"));
    let actual = read_actual(&maps).unwrap_or_else(|e| panic!("read pinned maps: {e}"));
    assert_eq!(actual, written, "pinned maps kept every entry");
    let mut ids = Ids::from_actual(&actual);
    let again = xkube_proxy::dataplane::desired(&svcs, &all_eps, &node, &mut ids);
    let ops = plan(&actual, &again);
    assert!(
        ops.is_empty(),
        "a restarted agent recomputes the same ids: {} ops, first {:?}",
        ops.len(),
        ops.first()
    );

    // And the loader path reuses the pins too (what the agent's Datapath::load does).
    let mut ebpf = load_pinned(pins.path());
    let maps2 = Maps::from_ebpf(&mut ebpf).unwrap_or_else(|e| panic!("maps: {e}"));
    assert_eq!(
        read_actual(&maps2).unwrap_or_else(|e| panic!("read: {e}")),
        written,
        "reloading the object with the pin paths reuses the pinned maps"
    );
}

#[test]
fn privileged_gc_removes_idle_and_stale_conntrack_affinity_and_sock_revnat_entries() {
    require_root();
    let mut ebpf = load();
    let mut maps = Maps::from_ebpf(&mut ebpf).unwrap_or_else(|e| panic!("maps: {e}"));
    let mut ids = Ids::new();
    let aff = service(json!({
        "metadata": {"name": "a", "namespace": "default"},
        "spec": {"clusterIP": "10.96.0.10", "sessionAffinity": "ClientIP",
                 "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
                 "ports": [{"port": 80, "targetPort": 8080}]}
    }));
    let state = xkube_proxy::dataplane::desired(
        &[aff, svc("b", "10.96.0.11")],
        &[eps("a", &["10.244.1.5"]), eps("b", &["10.244.1.6"])],
        &node(),
        &mut ids,
    );
    apply_and_check(&mut maps, &state, "gc setup");
    let backend_of = |ip: [u8; 4]| {
        state
            .backends
            .iter()
            .find(|(_, b)| b.addr == ne(Ipv4Addr::from(ip)))
            .map(|(id, b)| (*id, *b))
            .unwrap_or_else(|| panic!("backend {ip:?}"))
    };
    let (a_id, a_be) = backend_of([10, 244, 1, 5]);
    let (b_id, b_be) = backend_of([10, 244, 1, 6]);

    let sec = 1_000_000_000u64;
    // GC at "now + 8 h", so ages up to 8 h are representable however long the machine is up.
    let now = ktime_now_ns().unwrap_or_else(|e| panic!("clock: {e}")) + 8 * 3600 * sec;
    let ct_key = |sport: u16, proto: u8, dir: u8| CtKey {
        src_addr: ne(Ipv4Addr::new(198, 18, 0, 100)),
        dst_addr: ne(Ipv4Addr::new(10, 96, 0, 10)),
        src_port: sport.to_be(),
        dst_port: 80u16.to_be(),
        proto,
        dir,
        _pad: 0,
    };
    let ct_val = |backend_id: u32, rev_nat_id: u16, age_s: u64| CtValue {
        backend_id,
        rev_nat_id,
        last_seen: now.saturating_sub(age_s * sec),
        ..CtValue::default()
    };
    let closed = |v: CtValue, flags: u16| CtValue { flags, ..v };
    let entries = [
        // (key, value, survives)
        (
            ct_key(1001, IPPROTO_TCP, CT_DIR_FORWARD),
            ct_val(a_id, a_be.rev_nat_id, 10),
            true,
        ),
        (
            ct_key(1001, IPPROTO_TCP, CT_DIR_REPLY),
            ct_val(a_id, a_be.rev_nat_id, 10),
            true,
        ),
        (
            ct_key(1002, IPPROTO_TCP, CT_DIR_FORWARD),
            ct_val(a_id, a_be.rev_nat_id, 7 * 3600),
            false,
        ),
        (
            ct_key(1003, IPPROTO_UDP, CT_DIR_FORWARD),
            ct_val(a_id, a_be.rev_nat_id, 400),
            false,
        ),
        (
            ct_key(1004, IPPROTO_UDP, CT_DIR_FORWARD),
            ct_val(a_id, a_be.rev_nat_id, 100),
            true,
        ),
        // Closed TCP flows: reset, or FINs from both sides, go after 60 s; one FIN is a
        // half-closed flow that may still carry data.
        (
            ct_key(1007, IPPROTO_TCP, CT_DIR_FORWARD),
            closed(ct_val(a_id, a_be.rev_nat_id, 90), CT_F_RST),
            false,
        ),
        (
            ct_key(1007, IPPROTO_TCP, CT_DIR_REPLY),
            closed(
                ct_val(a_id, a_be.rev_nat_id, 90),
                CT_F_FIN_FORWARD | CT_F_FIN_REPLY,
            ),
            false,
        ),
        (
            ct_key(1008, IPPROTO_TCP, CT_DIR_FORWARD),
            closed(ct_val(a_id, a_be.rev_nat_id, 20), CT_F_RST),
            true,
        ),
        (
            ct_key(1008, IPPROTO_TCP, CT_DIR_REPLY),
            closed(ct_val(a_id, a_be.rev_nat_id, 90), CT_F_FIN_REPLY),
            true,
        ),
        // Backend id that does not exist.
        (
            ct_key(1005, IPPROTO_TCP, CT_DIR_FORWARD),
            ct_val(999_999, a_be.rev_nat_id, 1),
            false,
        ),
        // Backend id of another service.
        (
            ct_key(1006, IPPROTO_TCP, CT_DIR_FORWARD),
            ct_val(b_id, a_be.rev_nat_id, 1),
            false,
        ),
    ];
    for (k, v, _) in &entries {
        maps.conntrack
            .insert(k, v, 0)
            .unwrap_or_else(|e| panic!("insert ct: {e}"));
    }
    let aff_key = |last: u8, id: u16| AffinityKey {
        client_addr: ne(Ipv4Addr::new(198, 18, 0, last)),
        rev_nat_id: id,
        _pad: 0,
    };
    let aff_val = |backend_id: u32, age_s: u64| AffinityValue {
        backend_id,
        _pad: 0,
        last_used: now.saturating_sub(age_s * sec),
    };
    let affinity = [
        (aff_key(1, a_be.rev_nat_id), aff_val(a_id, 5), true),
        (aff_key(2, a_be.rev_nat_id), aff_val(a_id, 120), false), // past the 60 s timeout
        (aff_key(3, b_be.rev_nat_id), aff_val(b_id, 5), false),   // b has no affinity
        (aff_key(4, a_be.rev_nat_id), aff_val(12_345, 5), false), // backend gone
    ];
    for (k, v, _) in &affinity {
        maps.affinity
            .insert(k, v, 0)
            .unwrap_or_else(|e| panic!("insert affinity: {e}"));
    }
    let sock = [
        (
            SockRevNatKey {
                cookie: 1,
                addr: a_be.addr,
                port: a_be.port,
                _pad: 0,
            },
            SockRevNatValue {
                addr: ne(Ipv4Addr::new(10, 96, 0, 10)),
                port: 80u16.to_be(),
                rev_nat_id: a_be.rev_nat_id,
            },
            true,
        ),
        (
            SockRevNatKey {
                cookie: 2,
                addr: ne(Ipv4Addr::new(10, 244, 9, 9)),
                port: a_be.port,
                _pad: 0,
            },
            SockRevNatValue {
                addr: ne(Ipv4Addr::new(10, 96, 0, 10)),
                port: 80u16.to_be(),
                rev_nat_id: a_be.rev_nat_id,
            },
            false,
        ),
    ];
    for (k, v, _) in &sock {
        maps.sock_revnat
            .insert(k, v, 0)
            .unwrap_or_else(|e| panic!("insert sock revnat: {e}"));
    }

    let st = gc(&mut maps, now, &IdleTimeouts::default()).unwrap_or_else(|e| panic!("gc: {e}"));
    assert_eq!(st.conntrack_scanned, entries.len());
    assert_eq!(
        st.conntrack_idle, 4,
        "idle TCP (7 h), UDP (400 s) and closed TCP (90 s): {st:?}"
    );
    assert_eq!(
        st.conntrack_stale_backend, 2,
        "missing and foreign backend: {st:?}"
    );
    for (k, _, survives) in &entries {
        assert_eq!(
            maps.conntrack.get(k, 0).is_ok(),
            *survives,
            "conntrack {k:?} survives = {survives}"
        );
    }
    assert_eq!(st.affinity_removed, 3, "{st:?}");
    for (k, _, survives) in &affinity {
        assert_eq!(maps.affinity.get(k, 0).is_ok(), *survives, "affinity {k:?}");
    }
    assert_eq!(st.sock_revnat_removed, 1, "{st:?}");
    for (k, _, survives) in &sock {
        assert_eq!(
            maps.sock_revnat.get(k, 0).is_ok(),
            *survives,
            "sock revnat {k:?}"
        );
    }

    // Deleting service a's endpoint makes its remaining flows stale.
    let state2 = xkube_proxy::dataplane::desired(
        &[svc("b", "10.96.0.11")],
        &[eps("b", &["10.244.1.6"])],
        &node(),
        &mut ids,
    );
    apply_and_check(&mut maps, &state2, "service a deleted");
    let st = gc(&mut maps, now, &IdleTimeouts::default()).unwrap_or_else(|e| panic!("gc: {e}"));
    assert_eq!(st.conntrack_stale_backend, 5, "a's live flows: {st:?}");
    assert_eq!(st.affinity_removed, 1, "a's affinity: {st:?}");
    assert_eq!(st.sock_revnat_removed, 1, "a's socket entry: {st:?}");
}

#[test]
fn privileged_writer_task_applies_the_latest_state_and_reports_generations() {
    require_root();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    rt.block_on(async {
        let mut ebpf = load();
        let mut maps = Maps::from_ebpf(&mut ebpf).unwrap_or_else(|e| panic!("maps: {e}"));
        let node = node();
        let mut ids = Ids::new();
        // Something already in the maps, as after a restart.
        let old = xkube_proxy::dataplane::desired(
            &[svc("a", "10.96.0.10")],
            &[eps("a", &["10.244.1.5"])],
            &node,
            &mut ids,
        );
        apply_and_check(&mut maps, &old, "pre-existing state");

        let writer = Writer::new(
            maps,
            WriterConfig {
                gc_interval: Duration::from_millis(50),
                ..WriterConfig::default()
            },
        )
        .unwrap_or_else(|e| panic!("writer: {e}"));
        assert_eq!(
            writer.actual(),
            &old,
            "the writer starts from the actual state"
        );
        let mut ids = Ids::from_actual(writer.actual());
        let mut status = writer.subscribe();
        let (tx, rx) = tokio::sync::watch::channel::<Option<Arc<Desired>>>(None);
        let task = tokio::spawn(writer.run(rx));

        // No desired state yet: the writer must not touch the maps; GC runs meanwhile.
        tokio::time::timeout(Duration::from_secs(10), status.wait_for(|s| s.gc_runs >= 1))
            .await
            .unwrap_or_else(|_| panic!("the GC ran within 10 s"))
            .unwrap_or_else(|e| panic!("status channel: {e}"));
        assert_eq!(
            status.borrow().syncs,
            0,
            "nothing written before a desired state"
        );

        let mut last = old.clone();
        for n in 1..=5u8 {
            let names: Vec<String> = (0..n).map(|i| format!("s{i}")).collect();
            let svcs: Vec<Service> = names
                .iter()
                .enumerate()
                .map(|(i, name)| svc(name, &format!("10.96.1.{}", i + 1)))
                .collect();
            let endpoints: Vec<Endpoints> = names
                .iter()
                .map(|name| eps(name, &["10.244.1.5", "10.244.2.5"]))
                .collect();
            let st = xkube_proxy::dataplane::desired(&svcs, &endpoints, &node, &mut ids);
            last = st.clone();
            tx.send_replace(Some(Arc::new(Desired::new(st, &ids))));
        }
        let want = ids.generation();
        let report = tokio::time::timeout(
            Duration::from_secs(10),
            status.wait_for(|s| s.applied_generation == want),
        )
        .await
        .unwrap_or_else(|_| panic!("generation {want} applied within 10 s"))
        .unwrap_or_else(|e| panic!("status channel: {e}"))
        .clone();
        assert_eq!(report.errors, 0, "no sync errors: {report:?}");
        let sync = report
            .last_sync
            .unwrap_or_else(|| panic!("a sync report: {report:?}"));
        assert!(sync.total >= sync.plan, "latency covers planning");
        ids.release_applied(report.applied_generation);

        drop(tx);
        let maps = task
            .await
            .unwrap_or_else(|e| panic!("writer task: {e}"))
            .unwrap_or_else(|e| panic!("writer: {e}"));
        let actual = read_actual(&maps).unwrap_or_else(|e| panic!("read: {e}"));
        assert_eq!(actual, last, "the maps hold the last desired state");
        assert!(
            actual
                .services
                .keys()
                .all(|k| k.addr != ne(Ipv4Addr::new(10, 96, 0, 10))),
            "the pre-existing service not in the desired state was removed"
        );
    });
}

#[test]
fn privileged_writer_recovers_from_a_failed_apply() {
    require_root();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    rt.block_on(async {
        let mut ebpf = load();
        let maps = Maps::from_ebpf(&mut ebpf).unwrap_or_else(|e| panic!("maps: {e}"));
        let writer =
            Writer::new(maps, WriterConfig::default()).unwrap_or_else(|e| panic!("writer: {e}"));
        let mut ids = Ids::from_actual(writer.actual());
        let mut status = writer.subscribe();
        let (tx, rx) = tokio::sync::watch::channel::<Option<Arc<Desired>>>(None);
        let task = tokio::spawn(writer.run(rx));
        let svcs = [svc("a", "10.96.0.10")];
        let endpoints = [eps("a", &["10.244.1.5"])];

        // More node addresses than XKUBE_LOCAL_ADDRS holds: the apply fails part-way.
        let mut too_many = node();
        too_many.node_addrs = (0..100u8).map(|i| Ipv4Addr::new(198, 18, 1, i)).collect();
        let bad = xkube_proxy::dataplane::desired(&svcs, &endpoints, &too_many, &mut ids);
        tx.send_replace(Some(Arc::new(Desired::new(bad, &ids))));
        tokio::time::timeout(Duration::from_secs(10), status.wait_for(|s| s.errors >= 1))
            .await
            .unwrap_or_else(|_| panic!("the failed apply is reported within 10 s"))
            .unwrap_or_else(|e| panic!("status: {e}"));
        assert_eq!(
            status.borrow().applied_generation,
            0,
            "nothing reported applied"
        );

        let good = xkube_proxy::dataplane::desired(&svcs, &endpoints, &node(), &mut ids);
        tx.send_replace(Some(Arc::new(Desired::new(good.clone(), &ids))));
        let want = ids.generation();
        tokio::time::timeout(
            Duration::from_secs(10),
            status.wait_for(|s| s.applied_generation == want),
        )
        .await
        .unwrap_or_else(|_| panic!("the next state is applied within 10 s"))
        .unwrap_or_else(|e| panic!("status: {e}"));
        drop(tx);
        let maps = task
            .await
            .unwrap_or_else(|e| panic!("writer task: {e}"))
            .unwrap_or_else(|e| panic!("writer: {e}"));
        assert_eq!(
            read_actual(&maps).unwrap_or_else(|e| panic!("read: {e}")),
            good,
            "after re-reading the half-applied maps, the writer converged on the new state"
        );
    });
}
