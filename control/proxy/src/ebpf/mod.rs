//! The eBPF object built from `dataplane-ebpf/programs` and typed access to its programs.

pub mod datapath;
pub mod packet;
pub mod perpacket;
pub mod probe;
pub mod testrun;

/// The eBPF object file (ELF, BTF included), embedded at build time by `build.rs`.
pub fn object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xkube-ebpf"))
}

/// XDP return codes, as the kernel defines them.
pub mod xdp_action {
    pub const XDP_ABORTED: u32 = 0;
    pub const XDP_DROP: u32 = 1;
    pub const XDP_PASS: u32 = 2;
    pub const XDP_TX: u32 = 3;
    pub const XDP_REDIRECT: u32 = 4;

    /// The name of an XDP action, for messages.
    pub fn name(action: u32) -> &'static str {
        match action {
            XDP_ABORTED => "XDP_ABORTED",
            XDP_DROP => "XDP_DROP",
            XDP_PASS => "XDP_PASS",
            XDP_TX => "XDP_TX",
            XDP_REDIRECT => "XDP_REDIRECT",
            _ => "unknown",
        }
    }
}
