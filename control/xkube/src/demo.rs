//! `xkube demo probe`: the eBPF build chain end to end on two throwaway network namespaces.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use aya::programs::XdpMode;
use clap::Subcommand;
use xkube_netns::{NetNs, veth_pair};
use xkube_proxy::ebpf::probe::Probe;

#[derive(Subcommand)]
pub enum Demo {
    /// Attach the XDP probe to a veth in a throwaway namespace, send UDP and TCP to it and
    /// show the counters and the program's log lines.
    Probe {
        /// Datagrams and connections to send (bounded).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        count: u32,
    },
}

impl Demo {
    pub fn run(self) -> Result<()> {
        match self {
            Demo::Probe { count } => probe(count),
        }
    }
}

/// Collects aya-log records for printing.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<String>>>);

impl log::Log for Lines {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        if let Ok(mut l) = self.0.lock() {
            l.push(format!("{} {}", record.level(), record.args()));
        }
    }
    fn flush(&self) {}
}

const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 250, 1);
const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 250, 2);

fn probe(count: u32) -> Result<()> {
    let stale = xkube_netns::reap_stale("xkdemo").context("removing stale demo namespaces")?;
    if !stale.is_empty() {
        println!("removed {} stale demo namespace(s)", stale.len());
    }
    let client = NetNs::unique("xkdemo").context("creating the client namespace")?;
    let node = NetNs::unique("xkdemo").context("creating the node namespace")?;
    veth_pair(&client, "eth0", &node, "uplink").context("creating the veth pair")?;
    client.configure("eth0", CLIENT_IP, 30)?;
    node.configure("uplink", NODE_IP, 30)?;
    println!(
        "namespaces: client {} ({CLIENT_IP}) <-veth-> node {} ({NODE_IP})",
        client.name(),
        node.name()
    );

    let mut probe = Probe::load().context("loading xkube_probe (verifier)")?;
    let lines = Lines::default();
    let mut logger = probe.logger(lines.clone())?;
    node.run(|| probe.attach("uplink", XdpMode::Skb))??;
    println!(
        "attached XDP program xkube_probe to uplink in {}",
        node.name()
    );

    let udp = node.run(|| UdpSocket::bind((NODE_IP, 7000)))??;
    udp.set_read_timeout(Some(Duration::from_secs(5)))?;
    let tcp = node.run(|| TcpListener::bind((NODE_IP, 7001)))??;
    let server = std::thread::spawn(move || -> std::io::Result<u32> {
        let mut served = 0;
        for _ in 0..count {
            let (mut s, _) = tcp.accept()?;
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf)?;
            s.write_all(&buf)?;
            served += 1;
        }
        Ok(served)
    });
    client.run(|| -> Result<()> {
        let s = UdpSocket::bind((CLIENT_IP, 0))?;
        for i in 0..count {
            s.send_to(&i.to_be_bytes(), (NODE_IP, 7000))?;
        }
        for i in 0..count {
            let mut c =
                TcpStream::connect_timeout(&(NODE_IP, 7001).into(), Duration::from_secs(5))?;
            c.write_all(&i.to_be_bytes())?;
            let mut back = [0u8; 4];
            c.read_exact(&mut back)?;
        }
        Ok(())
    })??;
    let mut buf = [0u8; 16];
    for _ in 0..count {
        udp.recv_from(&mut buf)
            .context("UDP datagram through the probe")?;
    }
    let served = server
        .join()
        .map_err(|_| anyhow::anyhow!("TCP server thread panicked"))??;

    let c = probe.counters()?;
    logger.flush();
    println!("sent {count} UDP datagrams and {served} TCP request/responses through the probe");
    println!(
        "xkube_probe counters: frames={} ipv4={} tcp={} udp={} bytes={}",
        c.frames, c.ipv4, c.tcp, c.udp, c.bytes
    );
    for l in lines.0.lock().map(|l| l.clone()).unwrap_or_default() {
        println!("ebpf log: {l}");
    }
    if c.udp < u64::from(count) || c.tcp < u64::from(served) {
        bail!("the probe missed packets: {c:?}");
    }
    println!("ok: the eBPF chain works (build -> verifier -> attach -> maps -> log)");
    Ok(())
}
