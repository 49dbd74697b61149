//! Named network namespaces that clean up after themselves, and the few rtnetlink operations
//! the rest of xkube needs inside them (veth pairs, bridges, addresses, routes).
//!
//! A [`NetNs`] is a namespace bind-mounted at `/run/netns/<name>` (so `ip netns exec` sees it
//! too). The guard removes it in `Drop`, which also runs while a test panics. Names made by
//! [`NetNs::unique`] embed the creating process id, so [`reap_stale`] can remove leftovers of
//! killed runs without touching anything that is still in use.
//!
//! Work inside a namespace happens on a dedicated thread that has entered it with `setns`
//! ([`NetNs::run`], [`NetNs::block_on`]); the calling thread never changes namespace.

use std::{
    fs::{self, File},
    future::Future,
    net::Ipv4Addr,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

use futures::TryStreamExt;
use nix::{
    mount::{MntFlags, MsFlags, mount, umount2},
    sched::{CloneFlags, setns, unshare},
};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};

/// Where named network namespaces live (iproute2's convention).
pub const NETNS_DIR: &str = "/run/netns";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{op}: {source}")]
    Sys {
        op: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("netlink {op}: {source}")]
    Netlink {
        op: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("network namespace {0} already exists")]
    Exists(String),
    #[error("no link named {0}")]
    NoSuchLink(String),
    #[error("thread working in network namespace {0} panicked")]
    ThreadPanicked(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error + use<> {
    let path = path.to_owned();
    move |source| Error::Io { op, path, source }
}

fn sys(op: &'static str) -> impl FnOnce(nix::Error) -> Error {
    move |source| Error::Sys { op, source }
}

fn nl(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Error {
    let op = op.into();
    move |source| Error::Netlink { op, source }
}

/// A network namespace by path (`/run/netns/x`, `/proc/<pid>/ns/net`), not owned: `None`
/// is the calling process's own. Work runs on a dedicated thread that entered the namespace;
/// no other thread changes namespace. Clone freely.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NsRef(pub Option<PathBuf>);

impl NsRef {
    /// The calling process's namespace.
    pub fn current() -> Self {
        Self(None)
    }

    /// The namespace at `p`.
    pub fn path(p: impl Into<PathBuf>) -> Self {
        Self(Some(p.into()))
    }

    fn describe(&self) -> String {
        self.0
            .as_ref()
            .map_or_else(|| "of this process".to_owned(), |p| p.display().to_string())
    }

    /// Runs `f` on a thread inside the namespace and returns its result.
    pub fn run<F, R>(&self, f: F) -> Result<R>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let file = match &self.0 {
            Some(p) => Some(File::open(p).map_err(io("open network namespace", p))?),
            None => None,
        };
        std::thread::scope(|s| {
            s.spawn(move || -> Result<R> {
                if let Some(f) = &file {
                    setns(f, CloneFlags::CLONE_NEWNET).map_err(sys("setns(net)"))?;
                }
                Ok(f())
            })
            .join()
            .map_err(|_| Error::ThreadPanicked(self.describe()))?
        })
    }

    /// Runs a future to completion on a current-thread tokio runtime inside the namespace.
    pub fn block_on<F: Future + Send>(&self, fut: F) -> Result<F::Output>
    where
        F::Output: Send,
    {
        self.run(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|rt| rt.block_on(fut))
                .map_err(io("start runtime", Path::new(NETNS_DIR)))
        })?
    }

    /// [`NsRef::run`] from async code, on the blocking pool.
    pub async fn run_async<F, R>(&self, f: F) -> Result<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.run(f))
            .await
            .map_err(|_| Error::ThreadPanicked(self.describe()))?
    }

    /// Opens the namespace file (`/proc/self/ns/net` for the current one).
    pub fn open(&self) -> Result<File> {
        let p = self
            .0
            .clone()
            .unwrap_or_else(|| PathBuf::from("/proc/self/ns/net"));
        File::open(&p).map_err(io("open network namespace", &p))
    }
}

/// A named network namespace, removed when dropped.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    path: PathBuf,
    /// Removed in `Drop` (false for the process's own namespace and for kept ones).
    owned: bool,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

impl NetNs {
    /// Creates the namespace `name`; fails with [`Error::Exists`] if it is already there.
    pub fn create(name: &str) -> Result<Self> {
        let dir = Path::new(NETNS_DIR);
        fs::create_dir_all(dir).map_err(io("create directory", dir))?;
        let path = dir.join(name);
        if path.exists() {
            return Err(Error::Exists(name.to_owned()));
        }
        File::create(&path).map_err(io("create", &path))?;
        // unshare(CLONE_NEWNET) moves only the calling thread, so do it on a throwaway thread
        // and bind-mount that thread's namespace to keep it alive after the thread ends.
        let target = path.clone();
        let made = std::thread::spawn(move || -> Result<()> {
            unshare(CloneFlags::CLONE_NEWNET).map_err(sys("unshare(CLONE_NEWNET)"))?;
            mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(sys("bind-mount network namespace"))
        })
        .join()
        .map_err(|_| Error::ThreadPanicked(name.to_owned()))
        .and_then(|r| r);
        if let Err(e) = made {
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        let ns = Self {
            name: name.to_owned(),
            path,
            owned: true,
        };
        // A fresh namespace has loopback down; everything we build expects it up.
        ns.block_on(async { link_up(&connect()?, "lo").await })??;
        tracing::debug!(name, "created network namespace");
        Ok(ns)
    }

    /// Creates a namespace named `<prefix>-<pid>-<seq><rand>`, unique for this process and
    /// recognisable by [`reap_stale`] once the process is gone.
    pub fn unique(prefix: &str) -> Result<Self> {
        loop {
            let seq = SEQ.fetch_add(1, Ordering::Relaxed);
            let salt: u16 = rand::random();
            let name = format!("{prefix}-{}-{seq}{salt:04x}", std::process::id());
            match Self::create(&name) {
                Err(Error::Exists(_)) => continue,
                other => return other,
            }
        }
    }

    /// A guard for the existing named namespace `name`; dropping it removes the namespace.
    pub fn existing(name: &str) -> Result<Self> {
        let path = Path::new(NETNS_DIR).join(name);
        if !path.exists() {
            return Err(Error::Io {
                op: "open network namespace",
                path,
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        Ok(Self {
            name: name.to_owned(),
            path,
            owned: true,
        })
    }

    /// A handle on the existing named namespace `name` that does not remove it.
    pub fn borrowed(name: &str) -> Result<Self> {
        let mut ns = Self::existing(name)?;
        ns.owned = false;
        Ok(ns)
    }

    /// The namespace this process was started in (never removed).
    pub fn current() -> Self {
        Self {
            name: "host".to_owned(),
            path: PathBuf::from(format!("/proc/{}/ns/net", std::process::id())),
            owned: false,
        }
    }

    /// Keeps the namespace after this guard is gone (for long-lived topologies such as
    /// `xkube cluster up`); returns its name.
    pub fn keep(mut self) -> String {
        self.owned = false;
        std::mem::take(&mut self.name)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the namespace file (for `setns` or moving links into it).
    pub fn open(&self) -> Result<File> {
        File::open(&self.path).map_err(io("open", &self.path))
    }

    /// A clonable, non-owning reference to this namespace.
    pub fn as_ref(&self) -> NsRef {
        NsRef::path(&self.path)
    }

    /// Runs `f` on a thread inside this namespace and returns its result.
    pub fn run<F, R>(&self, f: F) -> Result<R>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        self.as_ref().run(f)
    }

    /// Runs a future to completion on a current-thread tokio runtime inside this namespace.
    /// Sockets and netlink connections it opens belong to the namespace.
    pub fn block_on<F: Future + Send>(&self, fut: F) -> Result<F::Output>
    where
        F::Output: Send,
    {
        self.as_ref().block_on(fut)
    }

    /// Brings `iface` up and gives it `addr/prefix`.
    pub fn configure(&self, iface: &str, addr: Ipv4Addr, prefix: u8) -> Result<()> {
        self.block_on(async {
            let h = connect()?;
            add_address(&h, iface, addr, prefix).await?;
            link_up(&h, iface).await
        })?
    }

    /// Adds a route to `dst/prefix` via `gateway`.
    pub fn add_route(&self, dst: Ipv4Addr, prefix: u8, gateway: Ipv4Addr) -> Result<()> {
        self.block_on(async { add_route(&connect()?, dst, prefix, gateway).await })?
    }

    /// Creates a bridge `name` in this namespace and brings it up.
    pub fn add_bridge(&self, name: &str) -> Result<()> {
        self.block_on(async {
            let h = connect()?;
            h.link()
                .add(LinkBridge::new(name).build())
                .execute()
                .await
                .map_err(nl(format!("add bridge {name}")))?;
            pin_link_address(&h, name).await?;
            link_up(&h, name).await
        })?
    }

    /// Attaches `port` (a link in this namespace) to `bridge` and brings it up.
    pub fn enslave(&self, port: &str, bridge: &str) -> Result<()> {
        self.block_on(async {
            let h = connect()?;
            let br = link_index(&h, bridge).await?;
            let idx = link_index(&h, port).await?;
            h.link()
                .set(LinkUnspec::new_with_index(idx).controller(br).up().build())
                .execute()
                .await
                .map_err(nl(format!("attach {port} to {bridge}")))
        })?
    }

    /// The kernel interface index of `iface` in this namespace.
    pub fn ifindex(&self, iface: &str) -> Result<u32> {
        self.block_on(async { link_index(&connect()?, iface).await })?
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        if let Err(e) = remove(&self.path) {
            tracing::warn!(name = %self.name, error = %e, "removing network namespace");
        } else {
            tracing::debug!(name = %self.name, "removed network namespace");
        }
    }
}

fn remove(path: &Path) -> Result<()> {
    // Detach: processes or sockets still inside keep the namespace alive, but the name goes.
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
        Err(e) => return Err(sys("umount network namespace")(e)),
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("remove", path)(e)),
    }
}

/// Creates a veth pair: `a_name` in `a`, `b_name` in `b`, both up, without addresses.
/// `b_name` may exist in `a` already (every pod has an `eth0`): the peer is created under a
/// temporary name, moved, then renamed.
pub fn veth_pair(a: &NetNs, a_name: &str, b: &NetNs, b_name: &str) -> Result<()> {
    let b_file = b.open()?;
    let b_fd = b_file.as_raw_fd();
    let tmp = format!("xkv{:08x}", rand::random::<u32>());
    let tmp_ref = tmp.as_str();
    a.block_on(async move {
        let h = connect()?;
        h.link()
            .add(LinkVeth::new(a_name, tmp_ref).build())
            .execute()
            .await
            .map_err(nl(format!("add veth {a_name}/{b_name}")))?;
        let peer = link_index(&h, tmp_ref).await?;
        h.link()
            .set(LinkUnspec::new_with_index(peer).setns_by_fd(b_fd).build())
            .execute()
            .await
            .map_err(nl(format!("move {b_name} to namespace")))?;
        link_up(&h, a_name).await
    })??;
    drop(b_file);
    b.block_on(async {
        let h = connect()?;
        let idx = link_index(&h, tmp_ref).await?;
        h.link()
            .set(LinkUnspec::new_with_index(idx).name(b_name).build())
            .execute()
            .await
            .map_err(nl(format!("rename veth peer to {b_name}")))?;
        link_up(&h, b_name).await
    })?
}

/// Removes every namespace named `<prefix>-<pid>-...` whose creating process is gone.
/// Returns the names removed.
pub fn reap_stale(prefix: &str) -> Result<Vec<String>> {
    let dir = Path::new(NETNS_DIR);
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("read directory", dir)(e)),
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(prefix)
            .and_then(|r| r.strip_prefix('-'))
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        remove(&entry.path())?;
        removed.push(name);
    }
    Ok(removed)
}

/// A netlink handle for the calling thread's namespace. Must be called inside a tokio runtime.
pub fn connect() -> Result<Handle> {
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(io("netlink socket", Path::new("")))?;
    tokio::spawn(conn);
    Ok(handle)
}

/// The link named `name`.
async fn get_link(h: &Handle, name: &str) -> Result<rtnetlink::packet_route::link::LinkMessage> {
    let mut links = h.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await {
        Ok(Some(link)) => Ok(link),
        Ok(None) => Err(Error::NoSuchLink(name.to_owned())),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc_enodev() => {
            Err(Error::NoSuchLink(name.to_owned()))
        }
        Err(e) => Err(nl(format!("get link {name}"))(e)),
    }
}

/// The index of the link named `name`.
pub async fn link_index(h: &Handle, name: &str) -> Result<u32> {
    Ok(get_link(h, name).await?.header.index)
}

/// The hardware address of the link named `name` (`None` for links without one).
pub async fn link_address(h: &Handle, name: &str) -> Result<Option<Vec<u8>>> {
    use rtnetlink::packet_route::link::LinkAttribute;
    Ok(get_link(h, name)
        .await?
        .attributes
        .into_iter()
        .find_map(|a| match a {
            LinkAttribute::Address(mac) => Some(mac),
            _ => None,
        }))
}

const fn libc_enodev() -> i32 {
    nix::libc::ENODEV
}

/// Brings the link `name` up.
pub async fn link_up(h: &Handle, name: &str) -> Result<()> {
    let idx = link_index(h, name).await?;
    h.link()
        .set(LinkUnspec::new_with_index(idx).up().build())
        .execute()
        .await
        .map_err(nl(format!("set {name} up")))
}

/// Sets the link's hardware address to the one it has now. For a bridge this is what keeps
/// it: a bridge whose address was never set follows the lowest address of its ports, so
/// removing a port can change the gateway's MAC under every neighbour that cached it (their
/// packets to it are dropped until the cache entry fails over, 10-30 s). An address set
/// through netlink is one the kernel no longer recalculates (`NET_ADDR_SET`).
pub async fn pin_link_address(h: &Handle, name: &str) -> Result<()> {
    let Some(mac) = link_address(h, name).await? else {
        return Ok(());
    };
    let idx = link_index(h, name).await?;
    h.link()
        .set(LinkUnspec::new_with_index(idx).address(mac).build())
        .execute()
        .await
        .map_err(nl(format!("pin the address of {name}")))
}

/// Adds `addr/prefix` to the link `name`.
pub async fn add_address(h: &Handle, name: &str, addr: Ipv4Addr, prefix: u8) -> Result<()> {
    let idx = link_index(h, name).await?;
    h.address()
        .add(idx, addr.into(), prefix)
        .execute()
        .await
        .map_err(nl(format!("add {addr}/{prefix} to {name}")))
}

/// Adds a route to `dst/prefix` via `gateway`.
pub async fn add_route(h: &Handle, dst: Ipv4Addr, prefix: u8, gateway: Ipv4Addr) -> Result<()> {
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(dst, prefix)
        .gateway(gateway)
        .build();
    h.route()
        .add(route)
        .execute()
        .await
        .map_err(nl(format!("add route {dst}/{prefix} via {gateway}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_root() -> bool {
        nix::unistd::Uid::effective().is_root()
    }

    #[test]
    fn unique_namespace_is_removed_on_drop_even_when_the_owner_panics() {
        assert!(
            is_root(),
            "network namespace tests need root (CI runs as root)"
        );
        let path = std::panic::catch_unwind(|| {
            let ns = NetNs::unique("xkt").expect("create namespace");
            let path = ns.path().to_owned();
            assert!(path.exists());
            std::panic::panic_any(path);
        })
        .expect_err("closure panics");
        let path = path.downcast::<PathBuf>().expect("payload is the path");
        assert!(!path.exists(), "{} left behind", path.display());
    }

    #[test]
    fn veth_pair_carries_udp_between_namespaces() {
        assert!(
            is_root(),
            "network namespace tests need root (CI runs as root)"
        );
        let a = NetNs::unique("xkt").expect("create a");
        let b = NetNs::unique("xkt").expect("create b");
        veth_pair(&a, "va", &b, "vb").expect("veth pair");
        a.configure("va", Ipv4Addr::new(198, 18, 200, 1), 30)
            .expect("addr a");
        b.configure("vb", Ipv4Addr::new(198, 18, 200, 2), 30)
            .expect("addr b");
        let server = b
            .run(|| std::net::UdpSocket::bind("198.18.200.2:9000"))
            .expect("enter b")
            .expect("bind in b");
        a.run(|| {
            let s = std::net::UdpSocket::bind("198.18.200.1:0").expect("bind in a");
            s.send_to(b"hello", "198.18.200.2:9000").expect("send");
        })
        .expect("enter a");
        server
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        let mut buf = [0u8; 16];
        let (n, from) = server.recv_from(&mut buf).expect("datagram arrives");
        assert_eq!(&buf[..n], b"hello");
        assert_eq!(
            from.ip(),
            std::net::IpAddr::V4(Ipv4Addr::new(198, 18, 200, 1))
        );
    }

    async fn mac_of(h: &Handle, name: &str) -> Vec<u8> {
        link_address(h, name)
            .await
            .expect("get link")
            .expect("link has an address")
    }

    /// A bridge follows its lowest port address unless its own was set: a pod veth joining
    /// and leaving must not change the gateway's MAC under the other pods.
    #[test]
    fn a_bridge_keeps_its_address_when_a_lower_addressed_port_comes_and_goes() {
        assert!(
            is_root(),
            "network namespace tests need root (CI runs as root)"
        );
        let a = NetNs::unique("xkt").expect("create a");
        let b = NetNs::unique("xkt").expect("create b");
        a.add_bridge("br0").expect("bridge");
        let before = a
            .block_on(async { mac_of(&connect().expect("netlink"), "br0").await })
            .expect("enter a");
        veth_pair(&a, "va", &b, "vb").expect("veth pair");
        // The lowest unicast, locally administered address there is: lower than the
        // bridge's (random) one.
        a.block_on(async {
            let h = connect().expect("netlink");
            let idx = link_index(&h, "va").await.expect("va");
            h.link()
                .set(
                    LinkUnspec::new_with_index(idx)
                        .address(vec![0x02, 0, 0, 0, 0, 0])
                        .build(),
                )
                .execute()
                .await
                .expect("set va's address");
        })
        .expect("enter a");
        a.enslave("va", "br0").expect("enslave");
        let with_port = a
            .block_on(async { mac_of(&connect().expect("netlink"), "br0").await })
            .expect("enter a");
        assert_eq!(with_port, before, "the port's address became the bridge's");
        drop(b); // the veth pair goes with b's end
        let after = a
            .block_on(async { mac_of(&connect().expect("netlink"), "br0").await })
            .expect("enter a");
        assert_eq!(after, before);
    }

    #[test]
    fn tx_checksum_offload_can_be_turned_off() {
        assert!(
            is_root(),
            "network namespace tests need root (CI runs as root)"
        );
        let a = NetNs::unique("xkt").expect("create a");
        let b = NetNs::unique("xkt").expect("create b");
        veth_pair(&a, "va", &b, "vb").expect("veth pair");
        assert!(
            a.tx_checksum("va").expect("get"),
            "veth offloads by default"
        );
        a.set_tx_checksum("va", false).expect("set");
        assert!(!a.tx_checksum("va").expect("get"));
    }

    #[test]
    fn reap_stale_removes_only_namespaces_of_dead_processes() {
        assert!(
            is_root(),
            "network namespace tests need root (CI runs as root)"
        );
        // pid 0 never names a live process in /proc.
        let stale = NetNs::create(&format!("xkreap-0-{:04x}", rand::random::<u16>()))
            .expect("create stale");
        let live = NetNs::unique("xkreap").expect("create live");
        let removed = reap_stale("xkreap").expect("reap");
        assert!(removed.contains(&stale.name().to_owned()), "{removed:?}");
        assert!(!stale.path().exists());
        assert!(live.path().exists());
    }
}

pub mod cgroup;
pub mod sysctl;

impl NetNs {
    /// Turns transmit checksum offload of `iface` on or off (`ethtool -K <iface> tx off`).
    ///
    /// A veth hands its peer packets whose TCP/UDP checksum is still partial (the kernel
    /// metadata says "to be completed"). XDP sees only the bytes, so a program that rewrites
    /// such a packet and transmits it (`XDP_TX`) sends a wrong checksum. Real NICs deliver
    /// complete checksums; on the veth topologies xkube builds, the senders compute them.
    pub fn set_tx_checksum(&self, iface: &str, enabled: bool) -> Result<()> {
        self.run(|| set_tx_checksum_here(iface, enabled))?
    }

    /// Whether transmit checksum offload of `iface` is on.
    pub fn tx_checksum(&self, iface: &str) -> Result<bool> {
        self.run(|| ethtool_tx_csum(iface, ETHTOOL_GTXCSUM, 0))?
            .map(|v| v != 0)
    }
}

/// [`NetNs::set_tx_checksum`] in the calling thread's namespace (for namespaces that are not
/// `NetNs` guards, such as a pod's).
pub fn set_tx_checksum_here(iface: &str, enabled: bool) -> Result<()> {
    ethtool_tx_csum(iface, ETHTOOL_STXCSUM, u32::from(enabled)).map(drop)
}

const ETHTOOL_GTXCSUM: u32 = 0x16;
const ETHTOOL_STXCSUM: u32 = 0x17;

fn ethtool_tx_csum(iface: &str, cmd: u32, data: u32) -> Result<u32> {
    use nix::libc;
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        data: *mut EthtoolValue,
        _pad: [u8; 16],
    }
    let bytes = iface.as_bytes();
    if bytes.len() >= libc::IFNAMSIZ {
        return Err(Error::NoSuchLink(iface.to_owned()));
    }
    let mut value = EthtoolValue { cmd, data };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: &mut value,
        _pad: [0; 16],
    };
    req.name[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: plain socket(2); the descriptor is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(sys("socket")(nix::Error::last()));
    }
    // SAFETY: SIOCETHTOOL with a valid ifreq whose data points at a live ethtool_value.
    let rc = unsafe { libc::ioctl(fd, libc::SIOCETHTOOL as _, &mut req) };
    let err = nix::Error::last();
    // SAFETY: fd came from socket(2) above and is not used afterwards.
    unsafe { libc::close(fd) };
    if rc < 0 {
        return Err(sys("SIOCETHTOOL tx checksum")(err));
    }
    Ok(value.data)
}

impl NetNs {
    /// Whether an XDP program is attached to `iface` (in any mode).
    pub fn xdp_attached(&self, iface: &str) -> Result<bool> {
        use rtnetlink::packet_route::link::{LinkAttribute, LinkXdp, XdpAttached};
        self.block_on(async {
            let h = connect()?;
            let mut links = h.link().get().match_name(iface.to_owned()).execute();
            let link = links
                .try_next()
                .await
                .map_err(nl(format!("get link {iface}")))?
                .ok_or_else(|| Error::NoSuchLink(iface.to_owned()))?;
            Ok(link.attributes.iter().any(|a| {
                matches!(a, LinkAttribute::Xdp(x) if x.iter().any(|x| matches!(x,
                    LinkXdp::Attached(m) if *m != XdpAttached::None)))
            }))
        })?
    }
}
