//! Host-local IPAM: pod addresses from the node's podCIDR, persisted in one JSON file under
//! the kubelet's root dir (written to a temporary file and renamed, so a crash never leaves a
//! torn file). The first address of the range is the bridge's, the last is the broadcast.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, invalid, io};

pub use xkube_api::net::Ipv4Cidr;

/// Parses an IPv4 prefix like `10.244.1.0/24` (a flag or a node's `spec.podCIDR`).
pub fn parse_cidr(s: &str) -> Result<Ipv4Cidr> {
    s.parse()
        .map_err(|e: xkube_api::net::CidrParseError| invalid("CIDR", e.to_string()))
}

/// The allocation table: address -> owner (pod uid).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool {
    pub cidr: Ipv4Cidr,
    pub allocated: BTreeMap<Ipv4Addr, String>,
    /// Where the next search starts (round-robin, so a released address is not reused at once).
    #[serde(default)]
    pub last: Option<Ipv4Addr>,
}

impl Pool {
    pub fn new(cidr: Ipv4Cidr) -> Self {
        Self {
            cidr,
            allocated: BTreeMap::new(),
            last: None,
        }
    }

    /// The address of `owner`, allocating one if it has none (idempotent).
    pub fn allocate(&mut self, owner: &str) -> Result<Ipv4Addr> {
        if let Some(ip) = self.owned_by(owner) {
            return Ok(ip);
        }
        let size = self.cidr.size();
        if size < 4 {
            return Err(Error::PoolExhausted(self.cidr.to_string()));
        }
        let base = u64::from(u32::from(self.cidr.network()));
        // Usable offsets: 2 ..= size-2 (0 network, 1 gateway, size-1 broadcast).
        let usable = size - 3;
        let start = self
            .last
            .map(|l| u64::from(u32::from(l)) - base + 1)
            .filter(|o| (2..=size - 2).contains(o))
            .unwrap_or(2);
        for i in 0..usable {
            let off = 2 + (start - 2 + i) % usable;
            let ip = Ipv4Addr::from(
                u32::try_from(base + off)
                    .map_err(|_| Error::PoolExhausted(self.cidr.to_string()))?,
            );
            if let std::collections::btree_map::Entry::Vacant(e) = self.allocated.entry(ip) {
                e.insert(owner.to_owned());
                self.last = Some(ip);
                return Ok(ip);
            }
        }
        Err(Error::PoolExhausted(self.cidr.to_string()))
    }

    pub fn owned_by(&self, owner: &str) -> Option<Ipv4Addr> {
        self.allocated
            .iter()
            .find(|(_, o)| o.as_str() == owner)
            .map(|(ip, _)| *ip)
    }

    /// Releases every address of `owner`; returns whether something was released.
    pub fn release(&mut self, owner: &str) -> bool {
        let before = self.allocated.len();
        self.allocated.retain(|_, o| o != owner);
        before != self.allocated.len()
    }
}

/// A [`Pool`] persisted at `<dir>/pool-<cidr>.json`.
#[derive(Debug)]
pub struct Ipam {
    path: PathBuf,
    pool: Pool,
}

impl Ipam {
    /// Loads the pool for `cidr` from `dir`, or starts an empty one.
    pub fn open(dir: &Path, cidr: Ipv4Cidr) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(io("create directory", dir))?;
        let path = dir.join(format!(
            "pool-{}-{}.json",
            cidr.network(),
            cidr.prefix_len()
        ));
        let pool = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice::<Pool>(&b)
                .ok()
                .filter(|p| p.cidr == cidr)
                .unwrap_or_else(|| {
                    tracing::warn!(path = %path.display(), "unreadable IPAM state, starting empty");
                    Pool::new(cidr)
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Pool::new(cidr),
            Err(e) => return Err(io("read", &path)(e)),
        };
        Ok(Self { path, pool })
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    pub fn allocate(&mut self, owner: &str) -> Result<Ipv4Addr> {
        let had = self.pool.owned_by(owner);
        let ip = self.pool.allocate(owner)?;
        if had.is_none() {
            self.save()?;
        }
        Ok(ip)
    }

    pub fn release(&mut self, owner: &str) -> Result<()> {
        if self.pool.release(owner) {
            self.save()?;
        }
        Ok(())
    }

    /// Releases every owner not in `keep` (pods that vanished while the kubelet was down).
    pub fn retain(&mut self, keep: &dyn Fn(&str) -> bool) -> Result<Vec<String>> {
        let gone: Vec<String> = self
            .pool
            .allocated
            .values()
            .filter(|o| !keep(o))
            .cloned()
            .collect();
        for o in &gone {
            self.pool.release(o);
        }
        if !gone.is_empty() {
            self.save()?;
        }
        Ok(gone)
    }

    fn save(&self) -> Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(&self.pool)
            .map_err(|e| invalid("IPAM state", e.to_string()))?;
        std::fs::write(&tmp, bytes).map_err(io("write", &tmp))?;
        std::fs::rename(&tmp, &self.path).map_err(io("rename", &self.path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Ipv4Cidr {
        parse_cidr(s).expect("valid cidr")
    }

    #[test]
    fn cidr_parses_masks_and_contains() {
        let c = cidr("10.244.1.7/24");
        assert_eq!(c.to_string(), "10.244.1.0/24");
        assert_eq!(c.gateway(), Ipv4Addr::new(10, 244, 1, 1));
        assert!(c.contains(Ipv4Addr::new(10, 244, 1, 200)));
        assert!(!c.contains(Ipv4Addr::new(10, 244, 2, 1)));
        assert!(parse_cidr("10.0.0.0").is_err());
        assert!(parse_cidr("10.0.0.0/33").is_err());
    }

    #[test]
    fn allocation_skips_network_gateway_and_broadcast_and_is_idempotent() {
        let mut p = Pool::new(cidr("10.244.1.0/29"));
        let a = p.allocate("a").expect("a");
        assert_eq!(a, Ipv4Addr::new(10, 244, 1, 2));
        assert_eq!(p.allocate("a").expect("again"), a);
        let rest: Vec<Ipv4Addr> = ["b", "c", "d", "e"]
            .iter()
            .map(|o| p.allocate(o).expect("fits"))
            .collect();
        assert_eq!(rest.last(), Some(&Ipv4Addr::new(10, 244, 1, 6)));
        assert!(matches!(p.allocate("f"), Err(Error::PoolExhausted(_))));
        assert!(p.release("c"));
        assert!(!p.release("c"));
        assert_eq!(
            p.allocate("f").expect("reuses"),
            Ipv4Addr::new(10, 244, 1, 4)
        );
    }

    #[test]
    fn released_addresses_are_not_reused_immediately() {
        let mut p = Pool::new(cidr("10.244.1.0/24"));
        let a = p.allocate("a").expect("a");
        p.release("a");
        let b = p.allocate("b").expect("b");
        assert_ne!(a, b);
    }

    #[test]
    fn state_survives_reopening_and_retain_drops_vanished_owners() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = cidr("10.244.3.0/24");
        let (a, b) = {
            let mut ipam = Ipam::open(dir.path(), c).expect("open");
            (
                ipam.allocate("a").expect("a"),
                ipam.allocate("b").expect("b"),
            )
        };
        let mut ipam = Ipam::open(dir.path(), c).expect("reopen");
        assert_eq!(ipam.allocate("a").expect("a again"), a);
        assert_eq!(ipam.pool().owned_by("b"), Some(b));
        let gone = ipam.retain(&|o| o == "a").expect("retain");
        assert_eq!(gone, ["b"]);
        let ipam = Ipam::open(dir.path(), c).expect("reopen 2");
        assert_eq!(ipam.pool().owned_by("b"), None);
        // A different CIDR starts its own pool.
        let other = Ipam::open(dir.path(), cidr("10.244.4.0/24")).expect("other");
        assert!(other.pool().allocated.is_empty());
    }
}
