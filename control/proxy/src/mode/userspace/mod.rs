//! The userspace mode (kube-proxy's original proxy, SEEDS.md B; removed from Kubernetes in
//! 1.26): per service port a socket the proxy listens on, iptables rules redirecting the
//! service's addresses and NodePort to it ([`rules`]), and for every client connection a
//! second connection from the node to a backend ([`relay`]), chosen by round robin with
//! ClientIP affinity ([`lb`]). The backend sees the node's address as its peer.
//!
//! - TCP: a failed dial is retried on the next endpoint with growing timeouts (250 ms, 500 ms,
//!   1 s, 2 s) and resets the client's affinity; without a usable endpoint the client's
//!   connection is reset.
//! - UDP: one backend socket per client address; replies go out of the service's listening
//!   socket, so the kernel's NAT gives them the service address; a flow idle for
//!   `--udp-timeout`, or whose backend is no endpoint any more, is closed.
//!
//! Listeners live in the agent: when it stops, the rules stay and point at closed ports until
//! the next agent's first sync (connections in flight are lost, as with kube-proxy's).

pub mod lb;
pub mod relay;
pub mod rules;

use std::{
    collections::{BTreeMap, HashMap},
    hash::{BuildHasher as _, Hasher as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{
    net::{TcpListener, TcpStream, UdpSocket},
    runtime::Handle,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use self::{
    lb::RoundRobin,
    relay::Ended,
    rules::{Portal, jumps, missing_jumps, restore_input},
};
use super::{
    ChangedServices, CleanupContext, ModeMetrics, Models, NodeInfo, Proxier, ProxyMode, SyncStats,
    Timing,
    iptables::exec::{self, BackendChoice, Iptables},
};
use crate::{
    Error, Result,
    model::{Protocol, ServiceModel, ServiceName, ServicePort},
};

/// Dial timeouts of the attempts at a backend (kube-proxy's `EndpointDialTimeouts`).
pub const DIAL_TIMEOUTS: [Duration; 4] = [
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
];

/// A range of host ports, inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

/// `begin-end` or `begin+offset`, as kube-proxy's `--proxy-port-range`.
pub fn parse_port_range(s: &str) -> std::result::Result<PortRange, String> {
    let bad = || format!("{s:?}: want \"begin-end\" or \"begin+offset\" (ports 1-65535)");
    let (first, last) = if let Some((a, b)) = s.split_once('-') {
        let a: u16 = a.trim().parse().map_err(|_| bad())?;
        (a, b.trim().parse::<u16>().map_err(|_| bad())?)
    } else if let Some((a, n)) = s.split_once('+') {
        let a: u16 = a.trim().parse().map_err(|_| bad())?;
        let n: u16 = n.trim().parse().map_err(|_| bad())?;
        (a, a.checked_add(n).ok_or_else(bad)?)
    } else {
        return Err(bad());
    };
    if first == 0 || first > last {
        return Err(bad());
    }
    Ok(PortRange { first, last })
}

/// Flags of the userspace mode.
#[derive(clap::Args, Debug, Clone)]
pub struct UserspaceOptions {
    /// Host ports the userspace proxy may listen on (`begin-end` or `begin+offset`; unset:
    /// ports the kernel picks).
    #[arg(long, value_parser = parse_port_range)]
    pub proxy_port_range: Option<PortRange>,
    /// How long an idle UDP flow keeps its backend socket (kube-proxy's `--udp-timeout`).
    #[arg(long, default_value = "250ms", value_parser = crate::agent::parse_period)]
    pub udp_timeout: Duration,
}

impl Default for UserspaceOptions {
    fn default() -> Self {
        Self {
            proxy_port_range: None,
            udp_timeout: Duration::from_millis(250),
        }
    }
}

/// Removes this mode's chains and jumps in both iptables backends. Idempotent; the listeners
/// go with the agent.
pub fn cleanup(_ctx: &CleanupContext) -> Result<()> {
    exec::remove_everywhere("userspace", rules::cleanup_input)
}

/// Counters of one service port.
#[derive(Default, Debug)]
pub struct PortCounters {
    /// Open TCP connections (UDP: live flows).
    pub active: AtomicU64,
    /// TCP connections (UDP: flows) proxied since start.
    pub total: AtomicU64,
    /// Bytes from clients to backends and back.
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
    /// Connections (datagrams) that found no endpoint answering.
    pub refused: AtomicU64,
}

/// The mode's metrics: per service port, connections and bytes.
#[derive(Default)]
pub struct UserspaceMetrics {
    ports: Mutex<BTreeMap<String, Arc<PortCounters>>>,
}

impl UserspaceMetrics {
    fn counters(&self, name: &str) -> Arc<PortCounters> {
        let mut m = self.ports.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(m.entry(name.to_string()).or_default())
    }

    fn forget(&self, name: &str) {
        self.ports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
    }
}

impl ModeMetrics for UserspaceMetrics {
    fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let ports = self.ports.lock().unwrap_or_else(|e| e.into_inner());
        let families = [
            (
                "xkube_proxy_userspace_connections_active",
                "gauge",
                "Open proxied TCP connections (UDP: live flows) per service port.",
            ),
            (
                "xkube_proxy_userspace_connections_total",
                "counter",
                "Proxied TCP connections (UDP: flows) per service port.",
            ),
            (
                "xkube_proxy_userspace_bytes_total",
                "counter",
                "Bytes proxied per service port and direction.",
            ),
            (
                "xkube_proxy_userspace_refused_total",
                "counter",
                "Connections or datagrams no endpoint took, per service port.",
            ),
        ];
        let _ = writeln!(
            out,
            "# HELP xkube_proxy_userspace_relays_total Proxied TCP connections by how bytes moved (splice: zero-copy; copy: the fallback).\n\
             # TYPE xkube_proxy_userspace_relays_total counter\n\
             xkube_proxy_userspace_relays_total{{method=\"splice\"}} {}\n\
             xkube_proxy_userspace_relays_total{{method=\"copy\"}} {}",
            relay::SPLICED.load(Ordering::Relaxed),
            relay::COPIED.load(Ordering::Relaxed),
        );
        for (i, (name, kind, help)) in families.iter().enumerate() {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (svc, c) in ports.iter() {
                let l = format!("service=\"{svc}\"");
                let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
                let _ = match i {
                    0 => writeln!(out, "{name}{{{l}}} {}", get(&c.active)),
                    1 => writeln!(out, "{name}{{{l}}} {}", get(&c.total)),
                    2 => writeln!(
                        out,
                        "{name}{{{l},direction=\"up\"}} {}\n{name}{{{l},direction=\"down\"}} {}",
                        get(&c.bytes_up),
                        get(&c.bytes_down)
                    ),
                    _ => writeln!(out, "{name}{{{l}}} {}", get(&c.refused)),
                };
            }
        }
    }
}

/// What the tasks of one service port share with the proxier.
struct PortShared {
    rr: Mutex<RoundRobin>,
    counters: Arc<PortCounters>,
}

impl PortShared {
    fn next(&self, client: Ipv4Addr, reset: bool) -> Option<SocketAddrV4> {
        self.rr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .next(client, reset, Instant::now())
    }

    fn serves(&self, ep: SocketAddrV4) -> bool {
        self.rr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(ep)
    }
}

/// One proxied service port.
struct PortProxy {
    portal: Portal,
    shared: Arc<PortShared>,
    /// Stops the listener's task (open connections finish on their own).
    stop: CancellationToken,
}

impl Drop for PortProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Service ports by (service, port name, protocol).
type PortKey = (ServiceName, String, Protocol);

/// The userspace proxier (module docs).
pub struct UserspaceProxier {
    opts: UserspaceOptions,
    node_ip: Ipv4Addr,
    ipt: Iptables,
    rt: Handle,
    ports: BTreeMap<PortKey, PortProxy>,
    /// The last restore input written (an unchanged one is not written again).
    written: Option<String>,
    next_port: u16,
    metrics: Arc<UserspaceMetrics>,
}

fn shuffle(list: &mut [SocketAddrV4]) {
    // Fisher-Yates over a per-call random seed (std's hasher keys are random).
    let mut x = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
        | 1;
    for i in (1..list.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        list.swap(i, (x % (i as u64 + 1)) as usize);
    }
}

fn usable(p: &ServicePort) -> Vec<SocketAddrV4> {
    p.usable_endpoints()
        .map(|e| SocketAddrV4::new(e.addr, e.port))
        .collect()
}

fn affinity(p: &ServicePort) -> Option<Duration> {
    p.affinity_timeout
        .map(|s| Duration::from_secs(u64::from(s)))
}

impl UserspaceProxier {
    /// A proxier for `node` (call inside the agent's runtime: listeners run on it).
    pub fn new(opts: &UserspaceOptions, backend: BackendChoice, node: &NodeInfo) -> Result<Self> {
        let ipt = Iptables::choose(backend);
        if !ipt.available() {
            return Err(Error::Flag {
                flag: "proxy-mode",
                reason: format!(
                    "userspace needs {}, which is not installed",
                    ipt.backend.name()
                ),
            });
        }
        Ok(Self {
            opts: opts.clone(),
            node_ip: node.addrs.first().copied().unwrap_or(Ipv4Addr::LOCALHOST),
            ipt,
            rt: Handle::current(),
            ports: BTreeMap::new(),
            written: None,
            next_port: opts.proxy_port_range.map_or(0, |r| r.first),
            metrics: Arc::new(UserspaceMetrics::default()),
        })
    }

    /// Opens the listener of a new service port and starts serving it.
    fn open(&mut self, name: &str, p: &ServicePort) -> Result<PortProxy> {
        let (fd, port) = bind_port(self.opts.proxy_port_range, &mut self.next_port, p.protocol)?;
        let mut rr = RoundRobin::new(affinity(p));
        rr.set_endpoints(&usable(p), shuffle);
        let shared = Arc::new(PortShared {
            rr: Mutex::new(rr),
            counters: self.metrics.counters(name),
        });
        let stop = CancellationToken::new();
        let _guard = self.rt.enter();
        match p.protocol {
            Protocol::Udp => {
                let std = std::net::UdpSocket::from(fd);
                std.set_nonblocking(true)
                    .map_err(io_err("set nonblocking"))?;
                let sock = UdpSocket::from_std(std).map_err(io_err("register a UDP socket"))?;
                self.rt.spawn(serve_udp(
                    Arc::new(sock),
                    Arc::clone(&shared),
                    stop.clone(),
                    self.opts.udp_timeout,
                ));
            }
            _ => {
                let std = std::net::TcpListener::from(fd);
                std.set_nonblocking(true)
                    .map_err(io_err("set nonblocking"))?;
                let l = TcpListener::from_std(std).map_err(io_err("register a TCP listener"))?;
                self.rt
                    .spawn(serve_tcp(l, Arc::clone(&shared), stop.clone()));
            }
        }
        info!(
            service = name,
            protocol = p.protocol.lower(),
            port,
            "opened proxy port"
        );
        Ok(PortProxy {
            portal: portal(name, p, port),
            shared,
            stop,
        })
    }

    /// Brings one service's ports to `model` (None: removed). Returns the ports opened or
    /// closed.
    fn sync_service(&mut self, name: &ServiceName, model: Option<&ServiceModel>) -> usize {
        let mut changes = 0;
        let wanted: BTreeMap<PortKey, &ServicePort> = model
            .into_iter()
            .flat_map(|m| &m.ports)
            .filter(|p| matches!(p.protocol, Protocol::Tcp | Protocol::Udp))
            .map(|p| ((name.clone(), p.port_name.clone(), p.protocol), p))
            .collect();
        let gone: Vec<PortKey> = self
            .ports
            .range((name.clone(), String::new(), Protocol::Tcp)..)
            .take_while(|(k, _)| k.0 == *name)
            .map(|(k, _)| k.clone())
            .filter(|k| !wanted.contains_key(k))
            .collect();
        for k in gone {
            if let Some(p) = self.ports.remove(&k) {
                info!(service = %p.portal.name, "closed proxy port");
                self.metrics.forget(&p.portal.name);
                changes += 1;
            }
        }
        for (k, p) in wanted {
            let pname = port_name(name, p);
            if let Some(existing) = self.ports.get_mut(&k) {
                {
                    let mut rr = existing.shared.rr.lock().unwrap_or_else(|e| e.into_inner());
                    rr.set_endpoints(&usable(p), shuffle);
                    rr.set_affinity(affinity(p));
                }
                existing.portal = portal(&pname, p, existing.portal.proxy_port);
                continue;
            }
            match self.open(&pname, p) {
                Ok(proxy) => {
                    self.ports.insert(k, proxy);
                    changes += 1;
                }
                Err(e) => warn!(service = pname, error = %e, "cannot open a proxy port"),
            }
        }
        changes
    }

    /// Writes the rules of every port; with `check_jumps` (a full sync), also the jumps from
    /// the built-in chains that are missing.
    fn write_rules(&mut self, check_jumps: bool) -> Result<usize> {
        let all_jumps = jumps();
        let missing = if check_jumps {
            missing_jumps(&self.ipt.save(None)?, &all_jumps)
        } else {
            Vec::new()
        };
        let portals: Vec<Portal> = self.ports.values().map(|p| p.portal.clone()).collect();
        let input = restore_input(&portals, self.node_ip, &missing);
        // A partial sync skips an unchanged input (endpoint changes only touch the round
        // robin); a full sync always writes, repairing rules changed by hand.
        if !check_jumps && self.written.as_ref() == Some(&input) {
            return Ok(0);
        }
        self.written = None;
        self.ipt.restore(&input)?;
        let lines = input.lines().filter(|l| l.starts_with("-A ")).count();
        self.written = Some(input);
        Ok(lines)
    }
}

/// Binds a listening socket of `protocol` on the next free port of `range` (from `next`,
/// wrapping around), or on one the kernel picks without a range; returns it with its port.
fn bind_port(
    range: Option<PortRange>,
    next: &mut u16,
    protocol: Protocol,
) -> Result<(std::os::fd::OwnedFd, u16)> {
    let try_bind = |port: u16| -> std::io::Result<(std::os::fd::OwnedFd, u16)> {
        let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
        let (fd, bound): (std::os::fd::OwnedFd, SocketAddr) = match protocol {
            Protocol::Udp => {
                let s = std::net::UdpSocket::bind(addr)?;
                let a = s.local_addr()?;
                (s.into(), a)
            }
            _ => {
                let l = std::net::TcpListener::bind(addr)?;
                let a = l.local_addr()?;
                (l.into(), a)
            }
        };
        Ok((fd, bound.port()))
    };
    let Some(range) = range else {
        return try_bind(0).map_err(io_err("bind a userspace proxy port"));
    };
    for _ in 0..=u32::from(range.last - range.first) {
        let port = (*next).clamp(range.first, range.last);
        *next = if port >= range.last {
            range.first
        } else {
            port + 1
        };
        if let Ok(b) = try_bind(port) {
            return Ok(b);
        }
    }
    Err(Error::Flag {
        flag: "proxy-port-range",
        reason: format!(
            "no free {} port in {}-{}",
            protocol.lower(),
            range.first,
            range.last
        ),
    })
}

fn io_err(op: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io {
        op,
        path: "userspace proxy socket".into(),
        source,
    }
}

fn port_name(name: &ServiceName, p: &ServicePort) -> String {
    format!("{name}:{}", p.port_name)
}

fn portal(name: &str, p: &ServicePort, proxy_port: u16) -> Portal {
    let mut addrs = vec![p.cluster_ip];
    addrs.extend(&p.external_ips);
    addrs.extend(&p.load_balancer_ips);
    addrs.retain(|a| !a.is_unspecified());
    addrs.dedup();
    Portal {
        name: name.to_string(),
        protocol: p.protocol,
        port: p.port,
        addrs,
        node_port: p.node_port,
        proxy_port,
    }
}

impl Proxier for UserspaceProxier {
    fn mode(&self) -> ProxyMode {
        ProxyMode::Userspace
    }

    fn set_node(&mut self, node: &NodeInfo) {
        if let Some(ip) = node.addrs.first() {
            self.node_ip = *ip;
        }
    }

    fn sync_changed(&mut self, changed: &ChangedServices) -> Result<SyncStats> {
        let mut listeners = 0;
        for (name, model) in changed {
            listeners += self.sync_service(name, model.as_deref());
        }
        let rules = self.write_rules(false)?;
        Ok(SyncStats {
            writes: rules + listeners,
            services: changed.len(),
        })
    }

    fn sync_full(&mut self, all: &Models) -> Result<SyncStats> {
        let gone: Vec<ServiceName> = self
            .ports
            .keys()
            .map(|k| k.0.clone())
            .filter(|n| !all.contains_key(n))
            .collect();
        let mut listeners = 0;
        for n in gone {
            listeners += self.sync_service(&n, None);
        }
        for (name, m) in all {
            listeners += self.sync_service(name, Some(m));
        }
        let rules = self.write_rules(true)?;
        Ok(SyncStats {
            writes: rules + listeners,
            services: all.len(),
        })
    }

    fn housekeeping(&mut self) -> Result<()> {
        let now = Instant::now();
        for p in self.ports.values() {
            p.shared
                .rr
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .expire(now);
        }
        Ok(())
    }

    /// kube-proxy's `--min-sync-period`; session affinity expires every 10 s.
    fn timing(&self) -> Timing {
        Timing {
            min_sync_period: Duration::from_secs(1),
            housekeeping_interval: Some(Duration::from_secs(10)),
            ..Timing::DEFAULT
        }
    }

    fn metrics(&self) -> Arc<dyn ModeMetrics> {
        self.metrics.clone()
    }
}

/// Accepts connections of one TCP service port until `stop`.
async fn serve_tcp(listener: TcpListener, shared: Arc<PortShared>, stop: CancellationToken) {
    loop {
        let (client, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(error = %e, "accepting a proxied connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        tokio::spawn(proxy_tcp(Arc::clone(&shared), client, peer));
    }
}

fn client_ip(peer: SocketAddr) -> Ipv4Addr {
    match peer {
        SocketAddr::V4(a) => *a.ip(),
        SocketAddr::V6(a) => a.ip().to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED),
    }
}

/// Dials a backend (retrying the next one with growing timeouts) and relays.
async fn proxy_tcp(shared: Arc<PortShared>, client: TcpStream, peer: SocketAddr) {
    let ip = client_ip(peer);
    let mut reset_affinity = false;
    for timeout in DIAL_TIMEOUTS {
        let Some(ep) = shared.next(ip, reset_affinity) else {
            break;
        };
        match tokio::time::timeout(timeout, TcpStream::connect(ep)).await {
            Ok(Ok(backend)) => {
                let c = &shared.counters;
                c.active.fetch_add(1, Ordering::Relaxed);
                c.total.fetch_add(1, Ordering::Relaxed);
                let _ = backend.set_nodelay(true);
                let _ = client.set_nodelay(true);
                let ((up, down), err) = match relay::relay(client, backend).await {
                    Ended::Closed(m) => (m, None),
                    Ended::Failed(m, e) => (m, Some(e)),
                };
                c.bytes_up.fetch_add(up, Ordering::Relaxed);
                c.bytes_down.fetch_add(down, Ordering::Relaxed);
                c.active.fetch_sub(1, Ordering::Relaxed);
                if let Some(e) = err {
                    debug!(%peer, backend = %ep, error = %e, "proxied connection ended with an error");
                }
                return;
            }
            Ok(Err(e)) => debug!(%peer, backend = %ep, error = %e, "dial failed; next endpoint"),
            Err(_) => debug!(%peer, backend = %ep, ?timeout, "dial timed out; next endpoint"),
        }
        reset_affinity = true;
    }
    shared.counters.refused.fetch_add(1, Ordering::Relaxed);
    relay::reset(&client);
}

/// One client's UDP flow: a socket connected to its backend.
struct UdpFlow {
    sock: UdpSocket,
    backend: SocketAddrV4,
    /// Milliseconds since `epoch` of the last datagram either way.
    last: AtomicU64,
    epoch: Instant,
}

impl UdpFlow {
    fn touch(&self) {
        self.last
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn idle_deadline(&self, timeout: Duration) -> tokio::time::Instant {
        let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
        tokio::time::Instant::from_std(self.epoch + last + timeout)
    }
}

type Flows = Arc<Mutex<HashMap<SocketAddr, Arc<UdpFlow>>>>;

/// Serves one UDP service port until `stop`.
async fn serve_udp(
    sock: Arc<UdpSocket>,
    shared: Arc<PortShared>,
    stop: CancellationToken,
    timeout: Duration,
) {
    let flows: Flows = Arc::default();
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, from) = tokio::select! {
            _ = stop.cancelled() => return,
            r = sock.recv_from(&mut buf) => match r {
                Ok(r) => r,
                Err(e) => {
                    debug!(error = %e, "receiving a proxied datagram");
                    continue;
                }
            },
        };
        let existing = flows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&from)
            .cloned();
        // A flow whose backend stopped serving the port is replaced (its client keeps its
        // source port and would otherwise talk to a gone pod until it goes idle).
        let flow = match existing {
            Some(f) if shared.serves(f.backend) => f,
            stale => {
                let reset = stale.is_some();
                match open_flow(&shared, &sock, &flows, from, reset, timeout, &stop).await {
                    Some(f) => f,
                    None => {
                        shared.counters.refused.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                }
            }
        };
        flow.touch();
        match flow.sock.send(&buf[..n]).await {
            Ok(sent) => {
                shared
                    .counters
                    .bytes_up
                    .fetch_add(sent as u64, Ordering::Relaxed);
            }
            Err(e) => {
                debug!(client = %from, backend = %flow.backend, error = %e, "forwarding a datagram");
                remove_flow(&flows, from, &flow);
            }
        }
    }
}

async fn open_flow(
    shared: &Arc<PortShared>,
    listener: &Arc<UdpSocket>,
    flows: &Flows,
    client: SocketAddr,
    reset: bool,
    timeout: Duration,
    stop: &CancellationToken,
) -> Option<Arc<UdpFlow>> {
    let ep = shared.next(client_ip(client), reset)?;
    let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await.ok()?;
    sock.connect(ep).await.ok()?;
    let flow = Arc::new(UdpFlow {
        sock,
        backend: ep,
        last: AtomicU64::new(0),
        epoch: Instant::now(),
    });
    flow.touch();
    // A replaced flow's reply task sees it is no longer in the map and ends.
    flows
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(client, Arc::clone(&flow));
    let c = &shared.counters;
    c.total.fetch_add(1, Ordering::Relaxed);
    c.active.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(udp_replies(
        Arc::clone(shared),
        Arc::clone(listener),
        Arc::clone(flows),
        Arc::clone(&flow),
        client,
        timeout,
        stop.clone(),
    ));
    Some(flow)
}

fn remove_flow(flows: &Flows, client: SocketAddr, flow: &Arc<UdpFlow>) {
    let mut m = flows.lock().unwrap_or_else(|e| e.into_inner());
    if m.get(&client).is_some_and(|f| Arc::ptr_eq(f, flow)) {
        m.remove(&client);
    }
}

/// Sends a flow's backend replies to its client out of the service's socket, until the flow
/// is idle for `timeout`, replaced, or the port closes.
async fn udp_replies(
    shared: Arc<PortShared>,
    listener: Arc<UdpSocket>,
    flows: Flows,
    flow: Arc<UdpFlow>,
    client: SocketAddr,
    timeout: Duration,
    stop: CancellationToken,
) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let replaced = !flows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&client)
            .is_some_and(|f| Arc::ptr_eq(f, &flow));
        if replaced {
            break;
        }
        let deadline = flow.idle_deadline(timeout);
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep_until(deadline) => {
                if flow.idle_deadline(timeout) <= tokio::time::Instant::now() {
                    break;
                }
            }
            r = flow.sock.recv(&mut buf) => match r {
                Ok(n) => {
                    flow.touch();
                    if listener.send_to(&buf[..n], client).await.is_ok() {
                        shared.counters.bytes_down.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
                // ICMP unreachable from the backend: the flow is over.
                Err(_) => break,
            },
        }
    }
    remove_flow(&flows, client, &flow);
    shared.counters.active.fetch_sub(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_parse_as_kube_proxy_reads_them() {
        assert_eq!(
            parse_port_range("30000-30100"),
            Ok(PortRange {
                first: 30000,
                last: 30100
            })
        );
        assert_eq!(
            parse_port_range("40000+10"),
            Ok(PortRange {
                first: 40000,
                last: 40010
            })
        );
        for bad in ["", "100", "200-100", "0-10", "65535+1", "a-b"] {
            assert!(parse_port_range(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn listeners_take_free_ports_of_the_range_and_report_when_none_is_left() {
        let ns = xkube_netns::NetNs::unique("xkus").expect("namespace (root)");
        ns.run(|| {
            let range = parse_port_range("40000+2").expect("range");
            let mut next = range.first;
            // Another program holds 40001: it is skipped.
            let _held = std::net::TcpListener::bind("0.0.0.0:40001").expect("hold 40001");
            let a = bind_port(Some(range), &mut next, Protocol::Tcp).expect("first");
            let b = bind_port(Some(range), &mut next, Protocol::Tcp).expect("second");
            assert_eq!((a.1, b.1), (40000, 40002));
            let Err(err) = bind_port(Some(range), &mut next, Protocol::Tcp) else {
                panic!("the range is full: no port expected");
            };
            assert!(
                err.to_string().contains("no free tcp port in 40000-40002"),
                "{err}"
            );
            // UDP ports are another space.
            let u = bind_port(Some(range), &mut next, Protocol::Udp).expect("udp");
            assert_eq!(u.1, 40000);
            let any = bind_port(None, &mut next, Protocol::Tcp).expect("kernel's pick");
            assert_ne!(any.1, 0);
        })
        .expect("enter namespace");
    }

    #[test]
    fn shuffle_is_a_permutation() {
        let mut list: Vec<SocketAddrV4> = (1..=20)
            .map(|i| SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, i), 80))
            .collect();
        let before = list.clone();
        shuffle(&mut list);
        let mut sorted = list.clone();
        sorted.sort();
        assert_eq!(sorted, before);
    }
}
