//! The uplink packet probe: an XDP program that counts what arrives on an interface.
//!
//! It is the smallest program that proves the whole chain (build, load, attach, maps, logs) and
//! stays useful as an interface counter. Counters are per CPU; userspace sums them.

/// Name of the per-CPU array of packet counters, indexed by [`ProbeCounter`].
pub const PROBE_COUNTERS: &str = "XKUBE_PROBE_COUNTERS";
/// Number of entries in [`PROBE_COUNTERS`].
pub const PROBE_COUNTERS_LEN: u32 = 5;

/// Name of the XDP program in the object file.
pub const PROBE_PROGRAM: &str = "xkube_probe";

/// Index into [`PROBE_COUNTERS`]. Stored as a plain `u32` in the map key.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeCounter {
    /// Every frame seen.
    Frames = 0,
    /// Frames carrying IPv4.
    Ipv4 = 1,
    /// IPv4 TCP segments.
    Tcp = 2,
    /// IPv4 UDP datagrams.
    Udp = 3,
    /// Bytes seen (sum of frame lengths).
    Bytes = 4,
}

impl ProbeCounter {
    /// All counters, in index order.
    pub const ALL: [ProbeCounter; PROBE_COUNTERS_LEN as usize] = [
        ProbeCounter::Frames,
        ProbeCounter::Ipv4,
        ProbeCounter::Tcp,
        ProbeCounter::Udp,
        ProbeCounter::Bytes,
    ];

    /// The map index of this counter.
    pub const fn index(self) -> u32 {
        self as u32
    }
}
