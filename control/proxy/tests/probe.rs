//! Privileged: the build chain end to end. The probe program compiled from
//! `dataplane-ebpf/programs` is loaded through the verifier, attached to a veth in a
//! test-owned network namespace, fed real packets, and read back (counters and aya-log).

use std::{
    net::{Ipv4Addr, UdpSocket},
    sync::{Arc, Mutex},
};

use aya::programs::XdpMode;
use xkube_netns::{NetNs, veth_pair};
use xkube_proxy::ebpf::{
    packet::{Endpoint, Frame, parse},
    probe::Probe,
    testrun, xdp_action,
};

/// Collects aya-log records.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<String>>>);

impl log::Log for Captured {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        if let Ok(mut lines) = self.0.lock() {
            lines.push(record.args().to_string());
        }
    }
    fn flush(&self) {}
}

fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "eBPF tests need root; CI runs them as root"
    );
}

#[test]
fn privileged_probe_attached_to_veth_counts_frames_and_logs() {
    require_root();
    let client = NetNs::unique("xkt").expect("client namespace");
    let node = NetNs::unique("xkt").expect("node namespace");
    veth_pair(&client, "eth0", &node, "uplink").expect("veth pair");
    client
        .configure("eth0", Ipv4Addr::new(198, 18, 201, 1), 30)
        .expect("client address");
    node.configure("uplink", Ipv4Addr::new(198, 18, 201, 2), 30)
        .expect("node address");

    let mut probe = Probe::load().expect("probe passes the verifier");
    let captured = Captured::default();
    let mut logger = probe.logger(captured.clone()).expect("aya-log ring buffer");
    // Generic (skb) mode: native XDP on a veth also needs a program on the peer to see
    // XDP_TX frames, but this probe only passes, and skb mode sees every frame the stack gets.
    let ifindex = node.ifindex("uplink").expect("ifindex");
    node.run(|| probe.attach("uplink", XdpMode::Skb))
        .expect("enter node namespace")
        .expect("attach probe");
    println!(
        "attached xkube_probe (XDP, skb mode) to uplink (ifindex {ifindex}) in netns {}",
        node.name()
    );

    let before = probe.counters().expect("read counters");
    let server = node
        .run(|| UdpSocket::bind("198.18.201.2:7000"))
        .expect("enter node")
        .expect("bind server");
    server
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .expect("timeout");
    const N: u64 = 25;
    client
        .run(|| {
            let s = UdpSocket::bind("198.18.201.1:0").expect("bind client");
            for i in 0..N {
                s.send_to(format!("ping {i}").as_bytes(), "198.18.201.2:7000")
                    .expect("send");
            }
        })
        .expect("enter client");
    let mut buf = [0u8; 64];
    for _ in 0..N {
        server
            .recv_from(&mut buf)
            .expect("every datagram passes the probe");
    }

    let after = probe.counters().expect("read counters");
    println!("probe counters before {before:?} after {after:?}");
    // ARP and IPv6 neighbour discovery may add frames, never remove any.
    assert!(after.udp - before.udp >= N, "{before:?} -> {after:?}");
    assert!(after.ipv4 - before.ipv4 >= N, "{before:?} -> {after:?}");
    assert!(after.frames - before.frames >= N, "{before:?} -> {after:?}");
    assert!(
        after.bytes - before.bytes >= N * 42,
        "{before:?} -> {after:?}"
    );
    assert_eq!(after.tcp, before.tcp, "no TCP was sent");

    logger.flush();
    let lines = captured.0.lock().expect("log lock").clone();
    println!("aya-log lines: {lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("xkube_probe: first frame on this cpu:")),
        "no log line from the probe: {lines:?}"
    );
}

#[test]
fn privileged_probe_test_run_passes_crafted_frames_unchanged() {
    require_root();
    let probe = Probe::load().expect("probe passes the verifier");
    let frame = Frame::udp(
        Endpoint::new(Ipv4Addr::new(198, 18, 0, 100), 40000),
        Endpoint::new(Ipv4Addr::new(198, 18, 0, 11), 30080),
        b"hello",
    )
    .build();
    let before = probe.counters().expect("counters");
    let run = testrun::run("xkube_probe", probe.program().expect("program"), &frame, 10)
        .expect("BPF_PROG_TEST_RUN");
    assert_eq!(
        run.action,
        xdp_action::XDP_PASS,
        "got {}",
        xdp_action::name(run.action)
    );
    assert_eq!(run.packet, frame, "the probe must not touch the frame");
    assert!(parse(&run.packet).expect("parses").l4_checksum_ok);
    let after = probe.counters().expect("counters");
    assert_eq!(after.udp - before.udp, 10, "one count per repeat");
    println!(
        "BPF_PROG_TEST_RUN xkube_probe: {} ns/packet",
        run.duration.as_nanos()
    );
}
