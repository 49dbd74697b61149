//! Privileged: the load-balancer programs through the verifier, and every packet translation
//! path on crafted frames with `BPF_PROG_TEST_RUN` (addresses, ports, checksums, actions).
//! Maps are written directly here; the Service/Endpoints writer has its own tests.

use std::{collections::HashSet, net::Ipv4Addr};

use aya::maps::{Array, HashMap, MapData};
use xkube_common::lb::{
    BACKEND_F_LOCAL, BACKENDS, Backend, CONNTRACK, CtKey, CtValue, FRONTEND_FILTER,
    FrontendFilterWords, IPPROTO_TCP, IPPROTO_UDP, LOCAL_ADDRS, LOCAL_F_NODE, MAGLEV,
    MAGLEV_TABLE_SIZE, MaglevKey, NODE_CONFIG, NODE_F_FRONTEND_FILTER, NodeConfig, SCOPE_DEFAULT,
    SERVICES, SVC_F_AFFINITY, SVC_F_CLUSTER_IP, SVC_F_MAGLEV, SVC_F_NODE_PORT, SVC_F_SNAT_REMOTE,
    ServiceKey, ServiceValue, flow_hash, frontend_filter_bit, programs,
};
use xkube_netns::NetNs;
use xkube_proxy::ebpf::{
    datapath::{Datapath, MAP_NAMES},
    packet::{Endpoint, Frame, IPPROTO_ICMP, Parsed, parse, tcp_flags},
    testrun::{self, PacketRun},
    xdp_action,
};

const TC_ACT_OK: u32 = 0;

fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "eBPF tests need root; CI runs them as root"
    );
}

/// Network-order u32 of an address, as the maps store it.
fn a(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

fn ep(ip: [u8; 4], port: u16) -> Endpoint {
    Endpoint::new(Ipv4Addr::from(ip), port)
}

const NODE: [u8; 4] = [198, 18, 0, 11];
const CLIENT: [u8; 4] = [198, 18, 0, 100];

struct Backendspec {
    id: u32,
    at: Endpoint,
    local: bool,
}

/// A test fixture: the programs loaded inside a throwaway namespace (so FIB lookups see an
/// empty routing table) with the node configuration written, the frontend filter on.
struct Fixture {
    dp: Datapath,
    ns: NetNs,
}

impl Fixture {
    fn new() -> Self {
        require_root();
        let ns = NetNs::unique("xkt").expect("namespace");
        let mut dp = Datapath::load(None).expect("programs pass the verifier");
        let node = a(Ipv4Addr::from(NODE));
        let mut cfg: Array<&mut MapData, NodeConfig> =
            Array::try_from(dp.ebpf_mut().map_mut(NODE_CONFIG).expect("node config map"))
                .expect("array");
        cfg.set(
            0,
            NodeConfig {
                node_addr: node,
                pod_cidr: a(Ipv4Addr::new(10, 244, 1, 0)),
                pod_cidr_len: 24,
                cluster_cidr: a(Ipv4Addr::new(10, 244, 0, 0)),
                cluster_cidr_len: 16,
                snat_port_min: 61000,
                snat_port_max: 65535,
                uplink_ifindex: 2,
                hairpin_addr: a(Ipv4Addr::new(10, 244, 1, 1)),
                flags: NODE_F_FRONTEND_FILTER,
                node_port_min: 30000,
                node_port_max: 32767,
            },
            0,
        )
        .expect("write node config");
        let mut local: HashMap<&mut MapData, u32, u32> =
            HashMap::try_from(dp.ebpf_mut().map_mut(LOCAL_ADDRS).expect("local addrs"))
                .expect("hash");
        local.insert(node, LOCAL_F_NODE, 0).expect("local addr");
        Self { dp, ns }
    }

    /// Sets (`on`) or clears the frontend filter bit of `addr`.
    fn filter_bit(&mut self, addr: Ipv4Addr, on: bool) {
        let mut filter: Array<&mut MapData, FrontendFilterWords> = Array::try_from(
            self.dp
                .ebpf_mut()
                .map_mut(FRONTEND_FILTER)
                .expect("frontend filter map"),
        )
        .expect("array");
        let bit = frontend_filter_bit(a(addr));
        let mut words = Box::new(filter.get(&0, 0).expect("read the filter"));
        let w = &mut words[(bit >> 6) as usize];
        if on {
            *w |= 1 << (bit & 63);
        } else {
            *w &= !(1 << (bit & 63));
        }
        filter.set(0, *words, 0).expect("write the filter");
    }

    /// Writes a frontend and its backends the way the writer does (filter bit of an exact
    /// frontend, backends, slots, frontend).
    fn service(
        &mut self,
        front: Endpoint,
        proto: u8,
        flags: u16,
        id: u16,
        backends: &[Backendspec],
    ) {
        if !front.ip.is_unspecified() {
            self.filter_bit(front.ip, true);
        }
        let ebpf = self.dp.ebpf_mut();
        {
            let mut bm: HashMap<&mut MapData, u32, Backend> =
                HashMap::try_from(ebpf.map_mut(BACKENDS).expect("backends")).expect("hash");
            for b in backends {
                bm.insert(
                    b.id,
                    Backend {
                        addr: a(b.at.ip),
                        port: b.at.port.to_be(),
                        proto,
                        flags: if b.local { BACKEND_F_LOCAL } else { 0 },
                        rev_nat_id: id,
                        _pad: 0,
                    },
                    0,
                )
                .expect("backend");
            }
        }
        let mut sm: HashMap<&mut MapData, ServiceKey, ServiceValue> =
            HashMap::try_from(ebpf.map_mut(SERVICES).expect("services")).expect("hash");
        let key = |slot: u16| ServiceKey {
            addr: a(front.ip),
            port: front.port.to_be(),
            proto,
            scope: SCOPE_DEFAULT,
            slot,
            _pad: 0,
        };
        for (i, b) in backends.iter().enumerate() {
            sm.insert(
                key(i as u16 + 1),
                ServiceValue {
                    backend_id: b.id,
                    rev_nat_id: id,
                    ..Default::default()
                },
                0,
            )
            .expect("slot");
        }
        sm.insert(
            key(0),
            ServiceValue {
                backend_id: 0,
                count: backends.len() as u16,
                rev_nat_id: id,
                flags,
                _pad: 0,
                affinity_timeout: if flags & SVC_F_AFFINITY != 0 {
                    10800
                } else {
                    0
                },
            },
            0,
        )
        .expect("frontend");
    }

    /// Changes the node config entry.
    fn node_config(&mut self, f: impl FnOnce(&mut NodeConfig)) {
        let mut cfg: Array<&mut MapData, NodeConfig> = Array::try_from(
            self.dp
                .ebpf_mut()
                .map_mut(NODE_CONFIG)
                .expect("node config map"),
        )
        .expect("array");
        let mut c = cfg.get(&0, 0).expect("read node config");
        f(&mut c);
        cfg.set(0, c, 0).expect("write node config");
    }

    fn remove_backend(&mut self, id: u32) {
        let mut bm: HashMap<&mut MapData, u32, Backend> =
            HashMap::try_from(self.dp.ebpf_mut().map_mut(BACKENDS).expect("backends"))
                .expect("hash");
        bm.remove(&id).expect("remove backend");
    }

    /// Makes every conntrack entry `secs` older.
    fn age_conntrack(&mut self, secs: u64) {
        let mut ct: HashMap<&mut MapData, CtKey, CtValue> =
            HashMap::try_from(self.dp.ebpf_mut().map_mut(CONNTRACK).expect("conntrack"))
                .expect("hash");
        let keys: Vec<CtKey> = ct.keys().map(|k| k.expect("conntrack key")).collect();
        for k in keys {
            let mut v = ct.get(&k, 0).expect("conntrack entry");
            v.last_seen = v.last_seen.saturating_sub(secs * 1_000_000_000);
            ct.insert(k, v, 0).expect("age conntrack entry");
        }
    }

    fn xdp(&self, frame: &[u8]) -> PacketRun {
        let prog = self.dp.xdp(programs::XDP_UPLINK).expect("xdp program");
        self.ns
            .run(|| testrun::run(programs::XDP_UPLINK, prog, frame, 1))
            .expect("enter namespace")
            .expect("BPF_PROG_TEST_RUN")
    }

    fn tc(&self, name: &'static str, frame: &[u8]) -> PacketRun {
        let prog = self.dp.tc(name).expect("tc program");
        self.ns
            .run(|| testrun::run(name, prog, frame, 1))
            .expect("enter namespace")
            .expect("BPF_PROG_TEST_RUN")
    }
}

fn parsed(run: &PacketRun) -> Parsed {
    let p = parse(&run.packet).expect("output parses as IPv4");
    assert!(p.ip_checksum_ok, "bad IPv4 checksum: {p:?}");
    assert!(p.l4_checksum_ok, "bad L4 checksum: {p:?}");
    p
}

fn syn(src: Endpoint, dst: Endpoint) -> Vec<u8> {
    Frame::tcp(src, dst, tcp_flags::SYN, b"").build()
}

#[test]
fn privileged_every_program_and_map_loads() {
    require_root();
    let dp = Datapath::load(None).expect("every program passes the verifier");
    for name in MAP_NAMES {
        assert!(
            dp.ebpf().map(name).is_some(),
            "map {name} missing from the object"
        );
    }
}

#[test]
fn privileged_xdp_nodeport_to_local_backend_is_dnated_and_passed_then_replies_restored() {
    let mut f = Fixture::new();
    let backend = ep([10, 244, 1, 5], 8080);
    f.service(
        ep([0, 0, 0, 0], 30080),
        IPPROTO_TCP,
        SVC_F_NODE_PORT | SVC_F_SNAT_REMOTE,
        7,
        &[Backendspec {
            id: 70,
            at: backend,
            local: true,
        }],
    );
    let client = ep(CLIENT, 40000);
    let node = ep(NODE, 30080);
    let run = f.xdp(&syn(client, node));
    assert_eq!(xdp_action::name(run.action), "XDP_PASS");
    let p = parsed(&run);
    assert_eq!(
        (p.src, p.dst),
        (client, backend),
        "DNAT only: client address kept"
    );

    // The pod's reply leaves through the uplink, where tc egress restores the node address.
    let reply = Frame::tcp(backend, client, tcp_flags::SYN | tcp_flags::ACK, b"").build();
    let run = f.tc(programs::TC_UPLINK_EGRESS, &reply);
    assert_eq!(run.action, TC_ACT_OK);
    let p = parsed(&run);
    assert_eq!(
        (p.src, p.dst),
        (node, client),
        "reply comes from the address the client used"
    );
}

#[test]
fn privileged_xdp_nodeport_to_remote_backend_is_snated_and_replies_translated_back() {
    let mut f = Fixture::new();
    let backend = ep([10, 244, 2, 7], 8080);
    f.service(
        ep([0, 0, 0, 0], 30080),
        IPPROTO_TCP,
        SVC_F_NODE_PORT | SVC_F_SNAT_REMOTE,
        8,
        &[Backendspec {
            id: 80,
            at: backend,
            local: false,
        }],
    );
    let client = ep(CLIENT, 40001);
    let node = ep(NODE, 30080);
    let run = f.xdp(&Frame::tcp(client, node, tcp_flags::SYN, b"hi").build());
    // No route in the test namespace: the translated frame goes to the stack.
    assert_eq!(xdp_action::name(run.action), "XDP_PASS");
    let p = parsed(&run);
    assert_eq!(p.dst, backend);
    assert_eq!(p.src.ip, Ipv4Addr::from(NODE), "SNAT to the node address");
    assert!(
        (61000..=65535).contains(&p.src.port),
        "SNAT port {}",
        p.src.port
    );
    assert_eq!(p.payload, b"hi");
    let snat = p.src;

    // The same flow keeps its backend and SNAT port.
    let again = parsed(&f.xdp(&Frame::tcp(client, node, tcp_flags::ACK, b"more").build()));
    assert_eq!((again.src, again.dst), (snat, backend));

    // The backend's reply comes back to this node's uplink and is translated to the client.
    let reply = Frame::tcp(backend, snat, tcp_flags::SYN | tcp_flags::ACK, b"").build();
    let run = f.xdp(&reply);
    assert_eq!(xdp_action::name(run.action), "XDP_PASS");
    let p = parsed(&run);
    assert_eq!((p.src, p.dst), (node, client));
}

#[test]
fn privileged_xdp_cluster_ip_from_outside_and_udp_are_translated() {
    let mut f = Fixture::new();
    let vip = ep([10, 96, 0, 10], 53);
    let backend = ep([10, 244, 2, 9], 5353);
    f.service(
        vip,
        IPPROTO_UDP,
        SVC_F_CLUSTER_IP | SVC_F_SNAT_REMOTE,
        9,
        &[Backendspec {
            id: 90,
            at: backend,
            local: false,
        }],
    );
    let client = ep(CLIENT, 5000);
    let run = f.xdp(&Frame::udp(client, vip, b"query").build());
    let p = parsed(&run);
    assert_eq!(p.dst, backend);
    assert_eq!(p.src.ip, Ipv4Addr::from(NODE));
    let reply = Frame::udp(backend, p.src, b"answer").build();
    let p = parsed(&f.xdp(&reply));
    assert_eq!(
        (p.src, p.dst),
        (vip, client),
        "UDP reply carries the service address"
    );
    assert_eq!(p.payload, b"answer");
}

#[test]
fn privileged_xdp_rejects_services_without_endpoints() {
    let mut f = Fixture::new();
    f.service(
        ep([0, 0, 0, 0], 30090),
        IPPROTO_TCP,
        SVC_F_NODE_PORT,
        10,
        &[],
    );
    f.service(
        ep([0, 0, 0, 0], 30090),
        IPPROTO_UDP,
        SVC_F_NODE_PORT,
        11,
        &[],
    );
    let client = ep(CLIENT, 40002);
    let node = ep(NODE, 30090);

    let run = f.xdp(&Frame::tcp(client, node, tcp_flags::SYN, b"").build());
    assert_eq!(xdp_action::name(run.action), "XDP_TX");
    let p = parsed(&run);
    assert_eq!(
        (p.src, p.dst),
        (node, client),
        "RST goes back to the client"
    );
    assert_eq!(p.tcp_flags, tcp_flags::RST | tcp_flags::ACK);
    let ack = u32::from_be_bytes(
        run.packet[14 + 20 + 8..14 + 20 + 12]
            .try_into()
            .expect("ack"),
    );
    assert_eq!(ack, 1001, "acknowledges the SYN (seq 1000 + 1)");

    let run = f.xdp(&Frame::udp(client, node, b"ping").build());
    assert_eq!(xdp_action::name(run.action), "XDP_TX");
    let p = parse(&run.packet).expect("ICMP parses");
    assert_eq!(p.proto, IPPROTO_ICMP);
    assert!(p.ip_checksum_ok && p.l4_checksum_ok, "{p:?}");
    assert_eq!((p.src.ip, p.dst.ip), (node.ip, client.ip));
    assert_eq!(
        &run.packet[34..36],
        &[3, 3],
        "destination unreachable / port unreachable"
    );
    // The quoted datagram is the original IPv4 header + the UDP header.
    assert_eq!(
        run.packet.len(),
        14 + 20 + 8 + 20 + 8,
        "ICMP quotes IPv4 header + 8 bytes"
    );
    assert_eq!(run.packet[42 + 9], IPPROTO_UDP, "quoted protocol");
    assert_eq!(
        &run.packet[42 + 12..42 + 16],
        &CLIENT,
        "quoted source is the client"
    );
    assert_eq!(
        &run.packet[62 + 2..62 + 4],
        &30090u16.to_be_bytes(),
        "quoted port"
    );
}

#[test]
fn privileged_client_ip_affinity_sticks_and_random_spreads() {
    let mut f = Fixture::new();
    let backends = |base: u32| {
        (0..3)
            .map(|i| Backendspec {
                id: base + i,
                at: ep([10, 244, 2, 10 + i as u8], 8080),
                local: false,
            })
            .collect::<Vec<_>>()
    };
    f.service(
        ep([10, 96, 0, 20], 80),
        IPPROTO_TCP,
        SVC_F_CLUSTER_IP | SVC_F_SNAT_REMOTE | SVC_F_AFFINITY,
        12,
        &backends(120),
    );
    f.service(
        ep([10, 96, 0, 21], 80),
        IPPROTO_TCP,
        SVC_F_CLUSTER_IP | SVC_F_SNAT_REMOTE,
        13,
        &backends(130),
    );
    let chosen = |f: &Fixture, vip: [u8; 4]| -> HashSet<Ipv4Addr> {
        (0..30u16)
            .map(|i| {
                parsed(&f.xdp(&syn(ep(CLIENT, 42000 + i), ep(vip, 80))))
                    .dst
                    .ip
            })
            .collect()
    };
    assert_eq!(
        chosen(&f, [10, 96, 0, 20]).len(),
        1,
        "affinity: one backend per client"
    );
    assert!(
        chosen(&f, [10, 96, 0, 21]).len() > 1,
        "random: connections spread"
    );
}

#[test]
fn privileged_maglev_follows_the_table_and_conntrack_revalidates_backends() {
    let mut f = Fixture::new();
    let vip = ep([10, 96, 0, 30], 80);
    let b1 = ep([10, 244, 2, 31], 8080);
    let b2 = ep([10, 244, 2, 32], 8080);
    f.service(
        vip,
        IPPROTO_TCP,
        SVC_F_CLUSTER_IP | SVC_F_SNAT_REMOTE | SVC_F_MAGLEV,
        14,
        &[
            Backendspec {
                id: 141,
                at: b1,
                local: false,
            },
            Backendspec {
                id: 142,
                at: b2,
                local: false,
            },
        ],
    );
    {
        let mut mg: HashMap<&mut MapData, MaglevKey, u32> =
            HashMap::try_from(f.dp.ebpf_mut().map_mut(MAGLEV).expect("maglev")).expect("hash");
        for index in 0..MAGLEV_TABLE_SIZE {
            let key = MaglevKey {
                rev_nat_id: 14,
                _pad: 0,
                index,
            };
            mg.insert(key, if index % 2 == 0 { 141 } else { 142 }, 0)
                .expect("maglev entry");
        }
    }
    for port in 43000..43020u16 {
        let client = ep(CLIENT, port);
        let h = flow_hash(
            a(client.ip),
            a(vip.ip),
            port.to_be(),
            vip.port.to_be(),
            IPPROTO_TCP,
        );
        let want = if (h % MAGLEV_TABLE_SIZE).is_multiple_of(2) {
            b1
        } else {
            b2
        };
        assert_eq!(
            parsed(&f.xdp(&syn(client, vip))).dst,
            want,
            "flow from port {port}"
        );
    }
    // A tracked flow whose backend disappears is re-balanced instead of black-holed.
    let client = ep(CLIENT, 43000);
    let first = parsed(&f.xdp(&syn(client, vip))).dst;
    let (gone, other) = if first == b1 { (141, b2) } else { (142, b1) };
    f.remove_backend(gone);
    {
        let mut mg: HashMap<&mut MapData, MaglevKey, u32> =
            HashMap::try_from(f.dp.ebpf_mut().map_mut(MAGLEV).expect("maglev")).expect("hash");
        let keep = if gone == 141 { 142 } else { 141 };
        for index in 0..MAGLEV_TABLE_SIZE {
            let key = MaglevKey {
                rev_nat_id: 14,
                _pad: 0,
                index,
            };
            mg.insert(key, keep, 0).expect("maglev entry");
        }
    }
    let p = parsed(&f.xdp(&Frame::tcp(client, vip, tcp_flags::ACK, b"").build()));
    assert_eq!(p.dst, other);
}

#[test]
fn privileged_tc_pod_to_cluster_ip_dnat_reply_and_hairpin() {
    let mut f = Fixture::new();
    let vip = ep([10, 96, 0, 40], 80);
    let pod_a = ep([10, 244, 1, 5], 41000);
    let pod_b = ep([10, 244, 1, 6], 8080);
    f.service(
        vip,
        IPPROTO_TCP,
        SVC_F_CLUSTER_IP,
        15,
        &[Backendspec {
            id: 150,
            at: pod_b,
            local: true,
        }],
    );

    // Pod A -> ClusterIP: DNAT to pod B, source kept (in-cluster clients are never SNATed).
    let run = f.tc(programs::TC_POD_INGRESS, &syn(pod_a, vip));
    assert_eq!(run.action, TC_ACT_OK);
    let p = parsed(&run);
    assert_eq!((p.src, p.dst), (pod_a, pod_b));
    // Pod B's reply (seen on B's veth ingress) gets the service address back.
    let reply = Frame::tcp(pod_b, pod_a, tcp_flags::SYN | tcp_flags::ACK, b"").build();
    let p = parsed(&f.tc(programs::TC_POD_INGRESS, &reply));
    assert_eq!((p.src, p.dst), (vip, pod_a));

    // Hairpin: pod B reaching itself through the service is SNATed to the bridge address.
    let self_client = ep([10, 244, 1, 6], 42000);
    let p = parsed(&f.tc(programs::TC_POD_INGRESS, &syn(self_client, vip)));
    assert_eq!(p.dst, pod_b);
    assert_eq!(p.src.ip, Ipv4Addr::new(10, 244, 1, 1), "hairpin source");
    let hairpin_src = p.src;
    let reply = Frame::tcp(pod_b, hairpin_src, tcp_flags::SYN | tcp_flags::ACK, b"").build();
    let p = parsed(&f.tc(programs::TC_POD_INGRESS, &reply));
    assert_eq!((p.src, p.dst), (vip, self_client));

    // Traffic that is not for a service passes untouched.
    let other = syn(pod_a, ep([10, 244, 2, 2], 80));
    let run = f.tc(programs::TC_POD_INGRESS, &other);
    assert_eq!((run.action, &run.packet), (TC_ACT_OK, &other));
}

#[test]
fn privileged_xdp_frontend_filter_rules_out_addresses_without_their_bit() {
    let mut f = Fixture::new();
    let vip = ep([10, 96, 0, 10], 80);
    let backend = ep([10, 244, 2, 9], 8080);
    f.service(
        vip,
        IPPROTO_TCP,
        SVC_F_CLUSTER_IP | SVC_F_SNAT_REMOTE,
        9,
        &[Backendspec {
            id: 90,
            at: backend,
            local: false,
        }],
    );
    let frame = syn(ep(CLIENT, 40001), vip);
    assert_eq!(parsed(&f.xdp(&frame)).dst, backend, "bit set: translated");
    // The bit cleared by hand: the program trusts the filter and skips the services map...
    f.filter_bit(vip.ip, false);
    let frame = syn(ep(CLIENT, 40002), vip);
    let run = f.xdp(&frame);
    assert_eq!(xdp_action::name(run.action), "XDP_PASS");
    assert_eq!(run.packet, frame, "the filter rules the frontend out");
    // ...unless the config says the filter is not written (an upgraded node before its
    // first sync).
    f.node_config(|c| c.flags &= !NODE_F_FRONTEND_FILTER);
    assert_eq!(parsed(&f.xdp(&frame)).dst, backend, "filter off: looked up");
}

#[test]
fn privileged_xdp_passes_foreign_traffic_untouched() {
    let f = Fixture::new();
    let frame = Frame::udp(ep(CLIENT, 1234), ep(NODE, 22), b"ssh?").build();
    let run = f.xdp(&frame);
    assert_eq!(xdp_action::name(run.action), "XDP_PASS");
    assert_eq!(run.packet, frame);
}

#[test]
fn privileged_xdp_node_address_fast_path_follows_the_node_config() {
    use xkube_common::lb::{NODE_F_FRONTEND_ON_NODE, SVC_F_EXTERNAL_IP};
    let mut f = Fixture::new();
    let backend = ep([10, 244, 1, 5], 8443);
    // An externalIP on the node's own address, on a port that is no NodePort.
    f.service(
        ep(NODE, 443),
        IPPROTO_TCP,
        SVC_F_EXTERNAL_IP | SVC_F_SNAT_REMOTE,
        9,
        &[Backendspec {
            id: 90,
            at: backend,
            local: true,
        }],
    );
    let frame = syn(ep(CLIENT, 40001), ep(NODE, 443));
    let run = f.xdp(&frame);
    assert_eq!(xdp_action::name(run.action), "XDP_PASS");
    assert_eq!(
        run.packet, frame,
        "without NODE_F_FRONTEND_ON_NODE, traffic to the node address is the node's own"
    );
    f.node_config(|c| c.flags |= NODE_F_FRONTEND_ON_NODE);
    let run = f.xdp(&frame);
    assert_eq!(xdp_action::name(run.action), "XDP_PASS");
    assert_eq!(
        parsed(&run).dst,
        backend,
        "with the flag the frontend is looked up"
    );

    // A NodePort outside the configured range is not looked up; inside it, it is.
    f.service(
        ep([0, 0, 0, 0], 29000),
        IPPROTO_TCP,
        SVC_F_NODE_PORT | SVC_F_SNAT_REMOTE,
        10,
        &[Backendspec {
            id: 100,
            at: backend,
            local: true,
        }],
    );
    let frame = syn(ep(CLIENT, 40002), ep(NODE, 29000));
    let run = f.xdp(&frame);
    assert_eq!(
        run.packet, frame,
        "29000 is below the NodePort range 30000-32767"
    );
    f.node_config(|c| c.node_port_min = 29000);
    let run = f.xdp(&frame);
    assert_eq!(parsed(&run).dst, backend, "inside the range");
}

/// A NodePort with one remote backend, SNAT limited to `ports` source ports.
fn snat_fixture(ports: u16) -> (Fixture, Endpoint, Endpoint) {
    let mut f = Fixture::new();
    f.node_config(|c| c.snat_port_max = c.snat_port_min + ports - 1);
    let backend = ep([10, 244, 2, 7], 8080);
    f.service(
        ep([0, 0, 0, 0], 30080),
        IPPROTO_TCP,
        SVC_F_NODE_PORT | SVC_F_SNAT_REMOTE,
        8,
        &[Backendspec {
            id: 80,
            at: backend,
            local: false,
        }],
    );
    (f, backend, ep(NODE, 30080))
}

/// Opens a connection from `client` through the uplink: the SNAT source the backend sees, or
/// `None` when the SYN was answered with a RST (no source port left).
fn open(f: &Fixture, client: Endpoint, node: Endpoint, backend: Endpoint) -> Option<Endpoint> {
    let run = f.xdp(&syn(client, node));
    let p = parsed(&run);
    if p.tcp_flags & tcp_flags::RST != 0 {
        assert_eq!(xdp_action::name(run.action), "XDP_TX");
        return None;
    }
    assert_eq!(p.dst, backend);
    let snat = p.src;
    let reply =
        parsed(&f.xdp(&Frame::tcp(backend, snat, tcp_flags::SYN | tcp_flags::ACK, b"").build()));
    assert_eq!(
        (reply.src, reply.dst),
        (node, client),
        "reply of {client:?}"
    );
    Some(snat)
}

/// Closes a connection the way HTTP/1.0 does (the backend's FIN first), or with a RST.
fn close(
    f: &Fixture,
    client: Endpoint,
    node: Endpoint,
    backend: Endpoint,
    snat: Endpoint,
    rst: bool,
) {
    let ack = tcp_flags::ACK;
    if rst {
        let p = parsed(&f.xdp(&Frame::tcp(backend, snat, tcp_flags::RST, b"").build()));
        assert_eq!(p.dst, client);
        return;
    }
    let p = parsed(&f.xdp(&Frame::tcp(backend, snat, tcp_flags::FIN | ack, b"").build()));
    assert_eq!(p.dst, client);
    let p = parsed(&f.xdp(&Frame::tcp(client, node, tcp_flags::FIN | ack, b"").build()));
    assert_eq!((p.src, p.dst), (snat, backend));
    let p = parsed(&f.xdp(&Frame::tcp(backend, snat, ack, b"").build()));
    assert_eq!(
        p.dst, client,
        "the last ACK still reaches the closing client"
    );
}

/// Closes a connection the client closes first (the backend ends without TIME_WAIT).
fn close_client_first(
    f: &Fixture,
    client: Endpoint,
    node: Endpoint,
    backend: Endpoint,
    snat: Endpoint,
) {
    let ack = tcp_flags::ACK;
    let p = parsed(&f.xdp(&Frame::tcp(client, node, tcp_flags::FIN | ack, b"").build()));
    assert_eq!((p.src, p.dst), (snat, backend));
    let p = parsed(&f.xdp(&Frame::tcp(backend, snat, tcp_flags::FIN | ack, b"").build()));
    assert_eq!(p.dst, client);
    let p = parsed(&f.xdp(&Frame::tcp(client, node, ack, b"").build()));
    assert_eq!(
        (p.src, p.dst),
        (snat, backend),
        "the last ACK reaches the backend"
    );
}

#[test]
fn privileged_xdp_snat_ports_of_reset_flows_are_reused_and_live_ones_never() {
    // 8 source ports, one held by a live connection, 200 connections reset one after another.
    let (f, backend, node) = snat_fixture(8);
    let live_client = ep(CLIENT, 20000);
    let live = open(&f, live_client, node, backend).expect("the first connection gets a port");
    for k in 0..200 {
        let client = ep(CLIENT, 30000 + k);
        let snat = open(&f, client, node, backend)
            .unwrap_or_else(|| panic!("connection {k} found no port among 7 of reset flows"));
        assert_ne!(snat, live, "connection {k} took the live connection's port");
        close(&f, client, node, backend, snat, true);
    }
    // The live connection still translates both ways.
    let p = parsed(&f.xdp(&Frame::tcp(live_client, node, tcp_flags::ACK, b"x").build()));
    assert_eq!((p.src, p.dst), (live, backend));
    let p = parsed(&f.xdp(&Frame::tcp(backend, live, tcp_flags::ACK, b"y").build()));
    assert_eq!((p.src, p.dst), (node, live_client));
}

#[test]
fn privileged_xdp_closed_flows_keep_their_snat_port_from_other_clients_through_the_backends_time_wait()
 {
    let (mut f, backend, node) = snat_fixture(4);
    // Connections closed with FINs keep their port from other clients while the backend may
    // hold the tuple in TIME_WAIT: the 4 ports run out and further clients get a RST.
    let mut opened = Vec::new();
    for k in 0..12 {
        let client = ep(CLIENT, 30000 + k);
        if let Some(snat) = open(&f, client, node, backend) {
            close(&f, client, node, backend, snat, false);
            opened.push((client, snat));
        }
    }
    assert_eq!(opened.len(), 4, "closed flows hold their ports: {opened:?}");
    // A client reopening from the same port gets its SNAT port back at once: the backend sees
    // the same tuple, which TIME_WAIT accepts a new SYN on.
    let (client, snat) = opened[0];
    assert_eq!(open(&f, client, node, backend), Some(snat));
    close(&f, client, node, backend, snat, false);

    // Past TIME_WAIT every port can go to other clients; replies go to the new clients.
    f.age_conntrack(61);
    for k in 0..12 {
        let client = ep(CLIENT, 31000 + k);
        let snat = open(&f, client, node, backend)
            .unwrap_or_else(|| panic!("connection {k} found no port after TIME_WAIT"));
        close(&f, client, node, backend, snat, true);
    }
    // A connection the client closes first leaves the backend without TIME_WAIT: its port is
    // free for other clients a second after the close.
    let mut closed_by_client = Vec::new();
    for k in 0..12 {
        let client = ep(CLIENT, 32000 + k);
        if let Some(snat) = open(&f, client, node, backend) {
            close_client_first(&f, client, node, backend, snat);
            closed_by_client.push(snat);
        }
    }
    assert_eq!(closed_by_client.len(), 4, "{closed_by_client:?}");
    f.age_conntrack(2);
    for k in 0..8 {
        let client = ep(CLIENT, 33000 + k);
        let snat = open(&f, client, node, backend)
            .unwrap_or_else(|| panic!("connection {k} found no port a second after the close"));
        close(&f, client, node, backend, snat, true);
    }

    // A client reusing the port of a closed connection whose SNAT port went to another
    // client opens a new flow.
    let (client, _) = opened[1];
    let snat = open(&f, client, node, backend).expect("a new flow on a reused client port");
    let p = parsed(&f.xdp(&Frame::tcp(backend, snat, tcp_flags::ACK, b"z").build()));
    assert_eq!((p.src, p.dst), (node, client));
}
