//! Running work inside a network namespace given by path (`/run/netns/x`,
//! `/proc/<pid>/ns/net`), or in the kubelet's own when there is none. Work happens on a
//! dedicated thread that entered the namespace; no other thread changes namespace.

use std::{future::Future, os::fd::AsRawFd, path::PathBuf};

use nix::sched::{CloneFlags, setns};

use crate::error::{Error, Result, io, sys};

/// A network namespace: `None` is the calling process's own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NsRef(pub Option<PathBuf>);

impl NsRef {
    pub fn current() -> Self {
        Self(None)
    }

    pub fn path(p: impl Into<PathBuf>) -> Self {
        Self(Some(p.into()))
    }

    /// Runs `f` on a thread inside the namespace.
    pub fn run<F, R>(&self, f: F) -> Result<R>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let file = match &self.0 {
            Some(p) => Some(std::fs::File::open(p).map_err(io("open network namespace", p))?),
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
            .map_err(|_| Error::Runtime("thread in network namespace panicked".into()))?
        })
    }

    /// Runs a future on a current-thread runtime inside the namespace.
    pub fn block_on<F: Future + Send>(&self, fut: F) -> Result<F::Output>
    where
        F::Output: Send,
    {
        self.run(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|rt| rt.block_on(fut))
                .map_err(io("start runtime", "netns"))
        })?
    }

    /// [`Self::run`] from async code, on the blocking pool.
    pub async fn run_async<F, R>(&self, f: F) -> Result<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.run(f))
            .await
            .map_err(|e| Error::Runtime(format!("blocking task: {e}")))?
    }

    /// Opens the namespace file (`/proc/self/ns/net` for the current one).
    pub fn open(&self) -> Result<std::fs::File> {
        let p = self
            .0
            .clone()
            .unwrap_or_else(|| PathBuf::from("/proc/self/ns/net"));
        std::fs::File::open(&p).map_err(io("open network namespace", &p))
    }
}

/// Turns transmit checksum offload of `iface` (in the calling thread's namespace) on or off,
/// like `ethtool -K <iface> tx off`. (The same ioctl as `xkube_netns::NetNs::set_tx_checksum`,
/// usable in namespaces that are not named `NetNs` guards, such as a pod's.)
pub fn set_tx_checksum(iface: &str, enabled: bool) -> Result<()> {
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
    const ETHTOOL_STXCSUM: u32 = 0x17;
    let bytes = iface.as_bytes();
    if bytes.len() >= libc::IFNAMSIZ {
        return Err(crate::error::invalid("interface name", iface));
    }
    let mut value = EthtoolValue {
        cmd: ETHTOOL_STXCSUM,
        data: u32::from(enabled),
    };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: &mut value,
        _pad: [0; 16],
    };
    req.name[..bytes.len()].copy_from_slice(bytes);
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(sys("socket"))?;
    // SAFETY: SIOCETHTOOL with a valid ifreq whose data points at a live ethtool_value; the
    // socket outlives the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL as _, &mut req) };
    if rc < 0 {
        return Err(sys("SIOCETHTOOL tx checksum")(nix::Error::last()));
    }
    Ok(())
}
