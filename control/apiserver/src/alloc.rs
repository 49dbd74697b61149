//! ClusterIP and NodePort allocation, persisted in the store (one key per allocated value,
//! created atomically, so allocation survives restarts and two requests never get the same).

use std::net::Ipv4Addr;
use std::sync::Arc;

use rand::Rng;
use xkube_api::net::Ipv4Cidr;
use xkube_store::Store;

use crate::error::{Error, Result};

/// Key prefix of allocated cluster IPs.
pub const IP_PREFIX: &str = "/registry/ranges/serviceips/";
/// Key prefix of allocated node ports.
pub const PORT_PREFIX: &str = "/registry/ranges/servicenodeports/";

/// Why a requested value could not be allocated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllocError {
    /// Outside the configured range.
    NotInRange(String),
    /// Already allocated.
    Taken,
    /// The range has no free value left.
    Full,
    /// The store failed.
    Store(String),
}

/// A range of IPv4 service addresses (network and broadcast addresses excluded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    cidr: Ipv4Cidr,
}

impl IpRange {
    /// Parses `10.96.0.0/12` (prefix 8..=30).
    pub fn parse(s: &str) -> Result<Self> {
        let cidr: Ipv4Cidr = s.parse().map_err(|_| {
            Error::Config(format!(
                "service cluster IP range {s:?} is not an IPv4 CIDR (only IPv4 is supported)"
            ))
        })?;
        if !(8..=30).contains(&cidr.prefix_len()) {
            return Err(Error::Config(format!(
                "service cluster IP range {s:?}: prefix must be 8..30"
            )));
        }
        Ok(IpRange { cidr })
    }

    fn size(&self) -> u32 {
        self.cidr.size() as u32
    }

    /// The range as a CIDR string.
    pub fn cidr(&self) -> String {
        self.cidr.to_string()
    }

    /// Whether `ip` is an allocatable address of the range.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let off = ip.to_bits().wrapping_sub(self.cidr.network().to_bits());
        self.cidr.contains(ip) && off > 0 && off < self.size() - 1
    }

    /// The first allocatable address (the `kubernetes` Service's).
    pub fn first(&self) -> Ipv4Addr {
        self.cidr.gateway()
    }

    /// The address `off` addresses into the range.
    fn nth(&self, off: u32) -> Option<Ipv4Addr> {
        self.cidr.nth(u64::from(off))
    }
}

/// A port range `first-last`, inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    /// First port.
    pub first: u16,
    /// Last port.
    pub last: u16,
}

impl PortRange {
    /// Parses `30000-32767`.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = || Error::Config(format!("service node port range {s:?} is not first-last"));
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let first: u16 = a.trim().parse().map_err(|_| bad())?;
        let last: u16 = b.trim().parse().map_err(|_| bad())?;
        if first == 0 || last < first {
            return Err(bad());
        }
        Ok(PortRange { first, last })
    }

    /// Whether the range holds `port`.
    pub fn contains(&self, port: i32) -> bool {
        port >= i32::from(self.first) && port <= i32::from(self.last)
    }
}

/// Allocates cluster IPs and node ports in the store.
#[derive(Clone)]
pub struct Allocators {
    store: Arc<dyn Store>,
    /// The service IP range.
    pub ips: IpRange,
    /// The node port range.
    pub ports: PortRange,
}

impl Allocators {
    /// Allocators over `store`.
    pub fn new(store: Arc<dyn Store>, ips: IpRange, ports: PortRange) -> Self {
        Allocators { store, ips, ports }
    }

    async fn claim(&self, key: String, owner: &str) -> Result<bool, AllocError> {
        match self.store.create(&key, owner.as_bytes().to_vec()).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_already_exists() => Ok(false),
            Err(e) => Err(AllocError::Store(e.to_string())),
        }
    }

    /// Allocates a specific cluster IP for `owner` (`ns/name`).
    pub async fn allocate_ip(&self, ip: &str, owner: &str) -> Result<(), AllocError> {
        let addr: Ipv4Addr = ip
            .parse()
            .map_err(|_| AllocError::NotInRange(self.ips.cidr()))?;
        if !self.ips.contains(addr) {
            return Err(AllocError::NotInRange(self.ips.cidr()));
        }
        if self.claim(format!("{IP_PREFIX}{addr}"), owner).await? {
            Ok(())
        } else {
            Err(AllocError::Taken)
        }
    }

    /// Allocates any free cluster IP (starting at a random offset).
    pub async fn allocate_any_ip(&self, owner: &str) -> Result<Ipv4Addr, AllocError> {
        let usable = self.ips.size() - 2;
        let start = rand::thread_rng().gen_range(0..usable);
        // Skip the first address: it belongs to the `kubernetes` Service.
        for i in 0..usable {
            let off = (start + i) % usable + 1;
            if off == 1 {
                continue;
            }
            let Some(addr) = self.ips.nth(off) else {
                continue;
            };
            if self.claim(format!("{IP_PREFIX}{addr}"), owner).await? {
                return Ok(addr);
            }
        }
        Err(AllocError::Full)
    }

    /// Allocates a specific node port.
    pub async fn allocate_port(&self, port: i32, owner: &str) -> Result<(), AllocError> {
        if !self.ports.contains(port) {
            return Err(AllocError::NotInRange(format!(
                "{}-{}",
                self.ports.first, self.ports.last
            )));
        }
        if self.claim(format!("{PORT_PREFIX}{port}"), owner).await? {
            Ok(())
        } else {
            Err(AllocError::Taken)
        }
    }

    /// Allocates any free node port.
    pub async fn allocate_any_port(&self, owner: &str) -> Result<i32, AllocError> {
        let n = u32::from(self.ports.last - self.ports.first) + 1;
        let start = rand::thread_rng().gen_range(0..n);
        for i in 0..n {
            let port = i32::from(self.ports.first) + ((start + i) % n) as i32;
            if self.claim(format!("{PORT_PREFIX}{port}"), owner).await? {
                return Ok(port);
            }
        }
        Err(AllocError::Full)
    }

    /// Releases a cluster IP (absent is fine).
    pub async fn release_ip(&self, ip: &str) {
        self.release(format!("{IP_PREFIX}{ip}")).await;
    }

    /// Releases a node port (absent is fine).
    pub async fn release_port(&self, port: i32) {
        self.release(format!("{PORT_PREFIX}{port}")).await;
    }

    async fn release(&self, key: String) {
        match self.store.delete(&key, None).await {
            Ok(_) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => tracing::warn!(key, error = %e, "releasing an allocation failed"),
        }
    }

    /// Makes allocations match the stored Services: claims what they use and releases what
    /// no Service uses (left over by a crash between allocation and write).
    pub async fn repair(&self) -> Result<()> {
        let (services, _) = self.store.list("/registry/services/").await?;
        let mut ips = std::collections::BTreeMap::new();
        let mut ports = std::collections::BTreeMap::new();
        for kv in &services {
            let Ok(svc) = serde_json::from_slice::<serde_json::Value>(&kv.value) else {
                continue;
            };
            let owner = format!(
                "{}/{}",
                xkube_api::meta::namespace(&svc),
                xkube_api::meta::name(&svc)
            );
            if let Some(ip) = svc["spec"]["clusterIP"].as_str()
                && ip.parse::<Ipv4Addr>().is_ok()
            {
                ips.insert(ip.to_string(), owner.clone());
            }
            for p in svc["spec"]["ports"].as_array().into_iter().flatten() {
                if let Some(np) = p["nodePort"].as_i64().filter(|n| *n > 0) {
                    ports.insert(np.to_string(), owner.clone());
                }
            }
        }
        for (prefix, used) in [(IP_PREFIX, &ips), (PORT_PREFIX, &ports)] {
            let (allocated, _) = self.store.list(prefix).await?;
            for kv in &allocated {
                let v = &kv.key[prefix.len()..];
                if !used.contains_key(v) {
                    tracing::info!(key = %kv.key, "releasing leaked allocation");
                    self.release(kv.key.clone()).await;
                }
            }
            for (v, owner) in used.iter() {
                let key = format!("{prefix}{v}");
                if !allocated.iter().any(|kv| kv.key == key) {
                    let _ = self.claim(key, owner).await;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ranges() {
        let r = IpRange::parse("10.96.0.0/12").expect("cidr");
        assert_eq!(r.first(), Ipv4Addr::new(10, 96, 0, 1));
        assert!(r.contains(Ipv4Addr::new(10, 111, 255, 254)));
        assert!(!r.contains(Ipv4Addr::new(10, 112, 0, 1)));
        assert!(!r.contains(Ipv4Addr::new(10, 96, 0, 0)));
        let p = PortRange::parse("30000-32767").expect("range");
        assert!(p.contains(30000) && p.contains(32767) && !p.contains(80));
        assert!(PortRange::parse("5-1").is_err());
    }

    #[tokio::test]
    async fn allocations_are_exclusive_and_released() {
        let store: Arc<dyn Store> = Arc::new(xkube_store::MemoryStore::new());
        let a = Allocators::new(
            store,
            IpRange::parse("10.0.0.0/29").expect("cidr"),
            PortRange::parse("30000-30001").expect("range"),
        );
        a.allocate_ip("10.0.0.3", "a").await.expect("free");
        assert_eq!(a.allocate_ip("10.0.0.3", "b").await, Err(AllocError::Taken));
        assert!(matches!(
            a.allocate_ip("10.0.1.3", "b").await,
            Err(AllocError::NotInRange(_))
        ));
        a.release_ip("10.0.0.3").await;
        a.allocate_ip("10.0.0.3", "b").await.expect("freed");
        let p1 = a.allocate_any_port("x").await.expect("port");
        let p2 = a.allocate_any_port("y").await.expect("port");
        assert_ne!(p1, p2);
        assert_eq!(a.allocate_any_port("z").await, Err(AllocError::Full));
    }
}
