//! The pod network ("host-gw"): a bridge `cbr0` holding the first address of the node's
//! podCIDR, a veth pair per pod (host side `veth<8 hex of the pod uid>` on the bridge, pod side
//! `eth0` with a default route via the bridge), host-local IPAM, direct routes to the other
//! nodes' podCIDRs via their InternalIPs, and masquerade for traffic leaving the cluster
//! networks. Everything through rtnetlink except the one `iptables-restore`.

use std::{
    collections::BTreeMap,
    io::Write as _,
    net::Ipv4Addr,
    os::{fd::AsRawFd, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::Stdio,
    sync::Mutex,
};

use futures::TryStreamExt;
use rtnetlink::{
    LinkBridge, LinkBridgePort, LinkUnspec, LinkVeth, RouteMessageBuilder,
    packet_route::route::{RouteAddress, RouteAttribute, RouteProtocol},
};
use tokio::sync::broadcast;
use xkube_netns::{add_address, connect, link_index, link_up, pin_link_address};

use xkube_netns::NsRef;

use crate::{
    error::{Error, Result, io},
    ipam::{Ipam, Ipv4Cidr},
};

/// The node bridge.
pub const BRIDGE: &str = "cbr0";
/// Routes to other nodes' podCIDRs carry this protocol number so a restart finds its own.
const ROUTE_PROTO: u8 = 0x58;
/// The masquerade chain in the nat table.
pub const MASQ_CHAIN: &str = "XKUBE-POSTROUTING";

/// What happened to a pod's network; the proxy attaches its tc programs to `host_veth`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNetworkEvent {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub host_veth: String,
    pub ip: Ipv4Addr,
    pub kind: PodNetworkEventKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodNetworkEventKind {
    Added,
    Removed,
}

/// The host-side veth name of a pod: `veth` + the first 8 hex digits of its uid.
pub fn host_veth_name(uid: &str) -> String {
    let hex: String = uid
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(8)
        .collect::<String>()
        .to_ascii_lowercase();
    format!("veth{hex:0<8}")
}

/// The masquerade rules (`iptables-restore --noflush` input): pod traffic to anything outside
/// the cluster CIDR leaves with the node's address.
pub fn masquerade_rules(pod_cidr: Ipv4Cidr, cluster_cidr: Ipv4Cidr) -> String {
    format!(
        "*nat\n:{MASQ_CHAIN} - [0:0]\n\
         -A {MASQ_CHAIN} -s {pod_cidr} -d {cluster_cidr} -m comment --comment \"xkube: pod to pod\" -j RETURN\n\
         -A {MASQ_CHAIN} -s {pod_cidr} ! -d {cluster_cidr} -m comment --comment \"xkube: leaving the cluster networks\" -j MASQUERADE\n\
         COMMIT\n"
    )
}

/// The node half of the pod network.
#[derive(Debug)]
pub struct PodNetwork {
    node_ns: NsRef,
    pod_cidr: Ipv4Cidr,
    cluster_cidr: Ipv4Cidr,
    ipam: Mutex<Ipam>,
    events: broadcast::Sender<PodNetworkEvent>,
}

/// Runs `cmd` in the namespace `ns` (a forked child enters it before exec).
fn command_in(ns: &NsRef, program: &str) -> Result<(std::process::Command, Option<std::fs::File>)> {
    let mut cmd = std::process::Command::new(program);
    let file = match &ns.0 {
        Some(p) => Some(std::fs::File::open(p).map_err(io("open network namespace", p))?),
        None => None,
    };
    if let Some(f) = &file {
        let fd = f.as_raw_fd();
        // SAFETY: only async-signal-safe syscalls (setns) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    Ok((cmd, file))
}

impl PodNetwork {
    pub fn new(
        node_ns: NsRef,
        pod_cidr: Ipv4Cidr,
        cluster_cidr: Ipv4Cidr,
        state_dir: &Path,
        events: broadcast::Sender<PodNetworkEvent>,
    ) -> Result<Self> {
        Ok(Self {
            node_ns,
            pod_cidr,
            cluster_cidr,
            ipam: Mutex::new(Ipam::open(state_dir, pod_cidr)?),
            events,
        })
    }

    pub fn pod_cidr(&self) -> Ipv4Cidr {
        self.pod_cidr
    }

    pub fn events(&self) -> &broadcast::Sender<PodNetworkEvent> {
        &self.events
    }

    fn ipam(&self) -> std::sync::MutexGuard<'_, Ipam> {
        // A panic while holding the lock leaves consistent data (every write is whole).
        self.ipam.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bridge with the gateway address, forwarding on, masquerade rules. Idempotent.
    pub fn setup_node(&self) -> Result<()> {
        let gw = self.pod_cidr.gateway();
        let prefix = self.pod_cidr.prefix_len();
        self.node_ns.block_on(async move {
            let h = connect()?;
            if link_index(&h, BRIDGE).await.is_err() {
                h.link()
                    .add(LinkBridge::new(BRIDGE).build())
                    .execute()
                    .await
                    .map_err(|source| Error::Netlink {
                        op: "add bridge cbr0".into(),
                        source,
                    })?;
            }
            let idx = link_index(&h, BRIDGE).await?;
            let mut addrs = h.address().get().set_link_index_filter(idx).execute();
            let mut has = false;
            while let Some(a) = addrs.try_next().await.map_err(|source| Error::Netlink {
                op: "list cbr0 addresses".into(),
                source,
            })? {
                use rtnetlink::packet_route::address::AddressAttribute;
                has |= a.attributes.iter().any(
                    |x| matches!(x, AddressAttribute::Address(std::net::IpAddr::V4(v)) if *v == gw),
                );
            }
            if !has {
                add_address(&h, BRIDGE, gw, prefix).await?;
            }
            // The gateway's MAC must not change when a pod's veth (a bridge port) goes.
            pin_link_address(&h, BRIDGE).await?;
            link_up(&h, BRIDGE).await?;
            Ok::<_, Error>(())
        })??;
        self.node_ns.run(|| {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
                .map_err(io("write", "/proc/sys/net/ipv4/ip_forward"))
        })??;
        self.apply_masquerade()
    }

    fn apply_masquerade(&self) -> Result<()> {
        let rules = masquerade_rules(self.pod_cidr, self.cluster_cidr);
        let (mut cmd, _f) = command_in(&self.node_ns, "iptables-restore")?;
        let mut child = cmd
            .args(["--noflush", "-w", "5"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io("spawn", "iptables-restore"))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(rules.as_bytes())
                .map_err(io("write", "iptables-restore stdin"))?;
        }
        let out = child
            .wait_with_output()
            .map_err(io("wait", "iptables-restore"))?;
        if !out.status.success() {
            return Err(Error::Iptables(String::from_utf8_lossy(&out.stderr).into()));
        }
        let jump = [
            "-t",
            "nat",
            "POSTROUTING",
            "-m",
            "comment",
            "--comment",
            "xkube pod masquerade",
            "-j",
            MASQ_CHAIN,
        ];
        let with = |op: &str| {
            let mut a = vec!["-w", "5", jump[0], jump[1], op];
            a.extend_from_slice(&jump[2..]);
            a.into_iter().map(str::to_owned).collect::<Vec<_>>()
        };
        let (mut check, _f) = command_in(&self.node_ns, "iptables")?;
        let present = check
            .args(with("-C"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(io("spawn", "iptables"))?
            .success();
        if !present {
            let (mut add, _f) = command_in(&self.node_ns, "iptables")?;
            let out = add
                .args(with("-A"))
                .output()
                .map_err(io("spawn", "iptables"))?;
            if !out.status.success() {
                return Err(Error::Iptables(String::from_utf8_lossy(&out.stderr).into()));
            }
        }
        Ok(())
    }

    /// Gives the pod whose network namespace is `pod_netns` its address and veth pair.
    /// Idempotent: an existing host veth (after a kubelet restart) is kept.
    pub fn attach(&self, uid: &str, pod_netns: &Path) -> Result<(Ipv4Addr, String)> {
        let ip = self.ipam().allocate(uid)?;
        let host = host_veth_name(uid);
        let gw = self.pod_cidr.gateway();
        let prefix = self.pod_cidr.prefix_len();
        let pod_file = std::fs::File::open(pod_netns).map_err(io("open", pod_netns))?;
        let pod_fd = pod_file.as_raw_fd();
        let tmp = format!("xkp{:08x}", rand::random::<u32>());
        let host_ref = host.as_str();
        let tmp_ref = tmp.as_str();
        let existed = self.node_ns.block_on(async move {
            let h = connect()?;
            if link_index(&h, host_ref).await.is_ok() {
                return Ok::<_, Error>(true);
            }
            h.link()
                .add(LinkVeth::new(host_ref, tmp_ref).build())
                .execute()
                .await
                .map_err(|source| Error::Netlink {
                    op: format!("add veth {host_ref}"),
                    source,
                })?;
            let peer = link_index(&h, tmp_ref).await?;
            h.link()
                .set(LinkUnspec::new_with_index(peer).setns_by_fd(pod_fd).build())
                .execute()
                .await
                .map_err(|source| Error::Netlink {
                    op: "move veth peer into the pod".into(),
                    source,
                })?;
            let br = link_index(&h, BRIDGE).await?;
            let idx = link_index(&h, host_ref).await?;
            h.link()
                .set(LinkUnspec::new_with_index(idx).controller(br).up().build())
                .execute()
                .await
                .map_err(|source| Error::Netlink {
                    op: format!("attach {host_ref} to {BRIDGE}"),
                    source,
                })?;
            // Hairpin mode on the bridge port (the kubelet's `--hairpin-mode=hairpin-veth`):
            // with br_netfilter, a pod's packet to its own service is DNATed back to itself
            // while it is being bridged, and must leave by the port it came in on.
            h.link()
                .set_port(LinkBridgePort::new(idx).hairpin(true).build())
                .execute()
                .await
                .map_err(|source| Error::Netlink {
                    op: format!("hairpin mode on {host_ref}"),
                    source,
                })?;
            Ok(false)
        })??;
        drop(pod_file);
        if !existed {
            NsRef::path(pod_netns).block_on(async move {
                let h = connect()?;
                link_up(&h, "lo").await?;
                let idx = link_index(&h, tmp_ref).await?;
                h.link()
                    .set(LinkUnspec::new_with_index(idx).name("eth0").build())
                    .execute()
                    .await
                    .map_err(|source| Error::Netlink {
                        op: "rename pod veth to eth0".into(),
                        source,
                    })?;
                add_address(&h, "eth0", ip, prefix).await?;
                link_up(&h, "eth0").await?;
                let route = RouteMessageBuilder::<Ipv4Addr>::new().gateway(gw).build();
                h.route()
                    .add(route)
                    .execute()
                    .await
                    .map_err(|source| Error::Netlink {
                        op: format!("default route via {gw}"),
                        source,
                    })?;
                // The XDP dataplane needs complete checksums on veth topologies.
                Ok::<_, Error>(xkube_netns::set_tx_checksum_here("eth0", false)?)
            })??;
        }
        tracing::debug!(uid, %ip, veth = %host, existed, "pod network attached");
        Ok((ip, host))
    }

    pub fn announce(&self, ev: PodNetworkEvent) {
        // No receiver is fine: nobody listens yet.
        let _ = self.events.send(ev);
    }

    /// Removes the pod's host veth (if still there) and releases its address.
    pub fn detach(&self, uid: &str) -> Result<Option<Ipv4Addr>> {
        let host = host_veth_name(uid);
        let host_ref = host.as_str();
        self.node_ns.block_on(async move {
            let h = connect()?;
            if let Ok(idx) = link_index(&h, host_ref).await {
                match h.link().del(idx).execute().await {
                    Ok(()) => {}
                    // Gone meanwhile (the pod namespace died and took the pair with it).
                    Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => {}
                    Err(source) => {
                        return Err(Error::Netlink {
                            op: format!("delete {host_ref}"),
                            source,
                        });
                    }
                }
            }
            Ok(())
        })??;
        let mut ipam = self.ipam();
        let ip = ipam.pool().owned_by(uid);
        ipam.release(uid)?;
        Ok(ip)
    }

    /// Releases addresses of pods not in `keep` (after a restart).
    pub fn release_others(&self, keep: &dyn Fn(&str) -> bool) -> Result<Vec<String>> {
        self.ipam().retain(keep)
    }

    /// Makes the routes to other nodes' podCIDRs exactly `routes` (podCIDR -> node IP).
    pub fn sync_routes(&self, routes: &BTreeMap<Ipv4Cidr, Ipv4Addr>) -> Result<()> {
        let want: Vec<(Ipv4Cidr, Ipv4Addr)> = routes
            .iter()
            .filter(|(c, _)| **c != self.pod_cidr)
            .map(|(c, g)| (*c, *g))
            .collect();
        self.node_ns.block_on(async move {
            let h = connect()?;
            // Ours, as they are now.
            let mut have: Vec<(
                Ipv4Cidr,
                Option<Ipv4Addr>,
                rtnetlink::packet_route::route::RouteMessage,
            )> = Vec::new();
            let mut list = h
                .route()
                .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
                .execute();
            while let Some(r) = list.try_next().await.map_err(|source| Error::Netlink {
                op: "list routes".into(),
                source,
            })? {
                if r.header.protocol != RouteProtocol::Other(ROUTE_PROTO) {
                    continue;
                }
                let mut dst = None;
                let mut gw = None;
                for a in &r.attributes {
                    match a {
                        RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = Some(*d),
                        RouteAttribute::Gateway(RouteAddress::Inet(g)) => gw = Some(*g),
                        _ => {}
                    }
                }
                if let Some(cidr) =
                    dst.and_then(|d| Ipv4Cidr::new(d, r.header.destination_prefix_length))
                {
                    have.push((cidr, gw, r));
                }
            }
            for (cidr, gw, msg) in have {
                if !want.iter().any(|(c, g)| *c == cidr && Some(*g) == gw) {
                    h.route()
                        .del(msg)
                        .execute()
                        .await
                        .map_err(|source| Error::Netlink {
                            op: format!("delete route {cidr}"),
                            source,
                        })?;
                }
            }
            for (cidr, gw) in want {
                let route = RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(cidr.network(), cidr.prefix_len())
                    .gateway(gw)
                    .protocol(RouteProtocol::Other(ROUTE_PROTO))
                    .build();
                if let Err(e) = h.route().add(route).replace().execute().await {
                    // An unreachable gateway (not on a connected network) is the node's
                    // problem to fix; keep the others.
                    tracing::warn!(%cidr, %gw, error = %e, "route to node podCIDR");
                }
            }
            Ok(())
        })?
    }
}

/// Where per-pod network state would live (kept for symmetry with the runtime's pod dirs).
pub fn ipam_dir(root: &Path) -> PathBuf {
    root.join("ipam")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_names_come_from_the_uid_and_fit_ifnamsiz() {
        let n = host_veth_name("3f2a9c1e-77aa-4b1c-9e0f-000000000000");
        assert_eq!(n, "veth3f2a9c1e");
        assert!(n.len() < 16);
        assert_eq!(host_veth_name("ab"), "vethab000000");
    }

    #[test]
    fn masquerade_rules_exempt_cluster_traffic() {
        let r = masquerade_rules(
            crate::ipam::parse_cidr("10.244.1.0/24").expect("cidr"),
            crate::ipam::parse_cidr("10.244.0.0/16").expect("cidr"),
        );
        assert!(r.starts_with("*nat\n:XKUBE-POSTROUTING - [0:0]\n"), "{r}");
        assert!(r.contains("-s 10.244.1.0/24 -d 10.244.0.0/16"), "{r}");
        assert!(
            r.contains("-s 10.244.1.0/24 ! -d 10.244.0.0/16 -m comment --comment \"xkube: leaving the cluster networks\" -j MASQUERADE"),
            "{r}"
        );
        assert!(r.ends_with("COMMIT\n"));
    }
}
