//! IPv4 prefixes (`10.244.1.0/24`): the cluster network, node pod ranges, the service range.
//! One type for the kubelet's IPAM, the node CIDR allocator, the service IP allocator and the
//! proxy's rules.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An IPv4 prefix, e.g. `10.244.1.0/24`. The address is stored masked (host bits cleared).
/// Serialized as `{"addr": "10.244.1.0", "prefix": 24}` (the kubelet's pool files).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Ipv4Cidr {
    addr: Ipv4Addr,
    prefix: u8,
}

const fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix as u32)
    }
}

impl Ipv4Cidr {
    /// `addr/prefix` with the host bits cleared; `None` if `prefix > 32`.
    pub const fn new(addr: Ipv4Addr, prefix: u8) -> Option<Self> {
        if prefix > 32 {
            return None;
        }
        Some(Self {
            addr: Ipv4Addr::from_bits(addr.to_bits() & mask(prefix)),
            prefix,
        })
    }

    /// The network address.
    pub fn network(&self) -> Ipv4Addr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` is in the prefix.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        ip.to_bits() & mask(self.prefix) == self.addr.to_bits()
    }

    /// How many addresses the prefix holds (network and broadcast included).
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix))
    }

    /// The `i`-th address of the prefix (`0` is the network address); `None` past the end.
    pub fn nth(&self, i: u64) -> Option<Ipv4Addr> {
        (i < self.size()).then(|| Ipv4Addr::from_bits(self.addr.to_bits() + i as u32))
    }

    /// The first usable address (a bridge's or gateway's).
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from_bits(self.addr.to_bits().wrapping_add(1))
    }

    /// The `i`-th `/prefix` subnet of this prefix (`10.244.0.0/16` -> `10.244.i.0/24`);
    /// `None` when `prefix` is shorter than this one's or `i` is past the last subnet.
    pub fn subnet(&self, prefix: u8, i: u64) -> Option<Ipv4Cidr> {
        if prefix < self.prefix || prefix > 32 || i >= 1u64 << (prefix - self.prefix) {
            return None;
        }
        let step = 1u64 << (32 - u32::from(prefix));
        Ipv4Cidr::new(
            Ipv4Addr::from_bits((u64::from(self.addr.to_bits()) + i * step) as u32),
            prefix,
        )
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A string that is not `a.b.c.d/len`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid IPv4 CIDR {0:?}: expected a.b.c.d/len with len 0..=32")]
pub struct CidrParseError(pub String);

impl FromStr for Ipv4Cidr {
    type Err = CidrParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || CidrParseError(s.to_owned());
        let (addr, len) = s.split_once('/').ok_or_else(err)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| err())?;
        let len: u8 = len.parse().map_err(|_| err())?;
        Self::new(addr, len).ok_or_else(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Ipv4Cidr {
        s.parse().expect(s)
    }

    #[test]
    fn parse_masks_and_prints() {
        assert_eq!(cidr("10.244.1.7/24").to_string(), "10.244.1.0/24");
        assert_eq!(cidr("0.0.0.0/0").size(), 1 << 32);
        for bad in [
            "10.0.0.0",
            "10.0.0.0/33",
            "10.0.0/8",
            "x/8",
            "10.0.0.0/-1",
            "::1/64",
        ] {
            assert!(bad.parse::<Ipv4Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn addresses_and_subnets() {
        let c = cidr("10.244.0.0/16");
        assert!(c.contains("10.244.255.255".parse().expect("ip")));
        assert!(!c.contains("10.245.0.0".parse().expect("ip")));
        assert_eq!(c.gateway(), Ipv4Addr::new(10, 244, 0, 1));
        assert_eq!(c.nth(258), Some(Ipv4Addr::new(10, 244, 1, 2)));
        assert_eq!(c.nth(1 << 16), None);
        assert_eq!(c.subnet(24, 3), Some(cidr("10.244.3.0/24")));
        assert_eq!(c.subnet(24, 256), None);
        assert_eq!(c.subnet(8, 0), None);
    }

    #[test]
    fn serialized_as_the_kubelet_pool_files_hold_it() {
        let c = cidr("10.244.1.0/24");
        let v = serde_json::to_value(c).expect("json");
        assert_eq!(v, serde_json::json!({"addr": "10.244.1.0", "prefix": 24}));
        assert_eq!(serde_json::from_value::<Ipv4Cidr>(v).expect("back"), c);
    }
}
