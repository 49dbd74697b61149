//! Per-namespace sysctls (`/proc/sys/net/...` resolves against the caller's namespace, so
//! these run on a thread inside the namespace).

use std::path::Path;

use crate::{Error, NetNs, Result};

/// Writes `value` to the sysctl at `key` (e.g. `net/ipv4/ip_forward`) inside `ns`.
pub fn set(ns: &NetNs, key: &str, value: &str) -> Result<()> {
    ns.run(|| set_here(key, value))?
}

/// Writes `value` to the sysctl at `key` in the calling thread's namespace.
pub fn set_here(key: &str, value: &str) -> Result<()> {
    let path = Path::new("/proc/sys").join(key);
    std::fs::write(&path, value).map_err(|source| Error::Io {
        op: "write sysctl",
        path,
        source,
    })
}

/// Reads the sysctl at `key` inside `ns`.
pub fn get(ns: &NetNs, key: &str) -> Result<String> {
    let path = Path::new("/proc/sys").join(key);
    ns.run(|| std::fs::read_to_string(&path))?
        .map(|s| s.trim().to_owned())
        .map_err(|source| Error::Io {
            op: "read sysctl",
            path: path.clone(),
            source,
        })
}
