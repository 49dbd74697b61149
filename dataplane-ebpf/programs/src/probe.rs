//! `xkube_probe`: an XDP interface counter (frames, IPv4, TCP, UDP, bytes) that always passes
//! the frame on. It logs the first frame each CPU sees, so a loader can prove the log path too.

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::PerCpuArray,
    programs::XdpContext,
};
use aya_log_ebpf::info;
use xkube_common::probe::{PROBE_COUNTERS_LEN, ProbeCounter};

use crate::net::{ETH_P_IP, IPPROTO_TCP, IPPROTO_UDP, ethertype, ipv4_protocol};

/// Must be named exactly `xkube_common::probe::PROBE_COUNTERS`.
#[map]
static XKUBE_PROBE_COUNTERS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(PROBE_COUNTERS_LEN, 0);

#[xdp]
pub fn xkube_probe(ctx: XdpContext) -> u32 {
    // Counting must never drop traffic: any failure still passes the frame.
    match try_probe(&ctx) {
        Ok(action) => action,
        Err(()) => xdp_action::XDP_PASS,
    }
}

#[inline(always)]
fn add(counter: ProbeCounter, n: u64) -> u64 {
    match XKUBE_PROBE_COUNTERS.get_ptr_mut(counter.index()) {
        Some(p) => {
            // SAFETY: per-CPU value, only this CPU writes it while the program runs.
            unsafe {
                let old = *p;
                *p = old + n;
                old
            }
        }
        None => 0,
    }
}

fn try_probe(ctx: &XdpContext) -> Result<u32, ()> {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let before = add(ProbeCounter::Frames, 1);
    add(ProbeCounter::Bytes, len);
    let ethertype = ethertype(ctx)?;
    if before == 0 {
        info!(
            ctx,
            "xkube_probe: first frame on this cpu: {} bytes, ethertype {:x}", len, ethertype
        );
    }
    if ethertype == ETH_P_IP {
        add(ProbeCounter::Ipv4, 1);
        match ipv4_protocol(ctx)? {
            IPPROTO_TCP => {
                add(ProbeCounter::Tcp, 1);
            }
            IPPROTO_UDP => {
                add(ProbeCounter::Udp, 1);
            }
            _ => {}
        }
    }
    Ok(xdp_action::XDP_PASS)
}
