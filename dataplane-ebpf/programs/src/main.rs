//! xkube's eBPF programs. Built for `bpfel-unknown-none` by `control/proxy/build.rs`
//! (aya-build) and embedded into the proxy from `OUT_DIR`.
#![no_std]
#![no_main]

mod lb;
mod maps;
mod nat;
mod net;
mod probe;
mod sock;
mod tc;
mod xdp;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    // The verifier rejects any path that could reach here (there is no unwinding in BPF);
    // aya-ebpf programs are written so that no panic path survives optimisation.
    loop {}
}

/// License section: the kernel only lets GPL-compatible programs use GPL helpers
/// (bpf_trace_printk, ring buffers used by aya-log, fib lookups).
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
