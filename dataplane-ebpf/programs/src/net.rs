//! Bounds-checked packet access shared by the programs. Header fields keep network byte order;
//! helpers say where they convert.

use aya_ebpf::programs::XdpContext;

pub const ETH_HDR_LEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// Offset of the IPv4 protocol byte from the start of the IPv4 header.
const IPV4_PROTO_OFF: usize = 9;

/// A pointer to `T` at `offset` bytes into the packet, or `Err` when the packet is too short.
/// The explicit comparison against `data_end` is what the verifier needs to see.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*const T, ()> {
    let start = ctx.data();
    let end = ctx.data_end();
    let len = core::mem::size_of::<T>();
    if start + offset + len > end {
        return Err(());
    }
    Ok((start + offset) as *const T)
}

/// The EtherType of the frame, converted to host byte order.
#[inline(always)]
pub fn ethertype(ctx: &XdpContext) -> Result<u16, ()> {
    let p: *const [u8; 2] = ptr_at(ctx, 12)?;
    // SAFETY: ptr_at checked that both bytes lie inside the packet.
    let b = unsafe { *p };
    Ok(u16::from_be_bytes(b))
}

/// The IPv4 protocol number of a frame whose EtherType is IPv4.
#[inline(always)]
pub fn ipv4_protocol(ctx: &XdpContext) -> Result<u8, ()> {
    let p: *const u8 = ptr_at(ctx, ETH_HDR_LEN + IPV4_PROTO_OFF)?;
    // SAFETY: ptr_at checked the byte lies inside the packet.
    Ok(unsafe { *p })
}
