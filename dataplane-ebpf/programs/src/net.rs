//! Bounds-checked packet access and checksum arithmetic shared by the programs. Header fields
//! keep network byte order; helpers say where they convert.

use aya_ebpf::programs::{TcContext, XdpContext};

pub const ETH_HDR_LEN: usize = 14;
pub const IP_HDR_LEN: usize = 20;
pub const L4_OFF: usize = ETH_HDR_LEN + IP_HDR_LEN;
pub const ETH_P_IP: u16 = 0x0800;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// IPv4 header field offsets from the start of the IPv4 header.
pub mod ip {
    pub const TOT_LEN: usize = 2;
    pub const FRAG_OFF: usize = 6;
    pub const TTL: usize = 8;
    pub const PROTO: usize = 9;
    pub const CHECK: usize = 10;
    pub const SADDR: usize = 12;
    pub const DADDR: usize = 16;
}

/// Offset of the checksum in the L4 header.
pub const TCP_CHECK: usize = 16;
pub const UDP_CHECK: usize = 6;
/// Offset of the flags byte in the TCP header, and the flags.
pub const TCP_FLAGS: usize = 13;
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Contexts with direct packet access.
pub trait Packet {
    fn start(&self) -> usize;
    fn end(&self) -> usize;
}

impl Packet for XdpContext {
    #[inline(always)]
    fn start(&self) -> usize {
        self.data()
    }
    #[inline(always)]
    fn end(&self) -> usize {
        self.data_end()
    }
}

impl Packet for TcContext {
    #[inline(always)]
    fn start(&self) -> usize {
        self.data()
    }
    #[inline(always)]
    fn end(&self) -> usize {
        self.data_end()
    }
}

/// A pointer to `T` at `offset` bytes into the packet, or `Err` when the packet is too short.
/// The explicit comparison against the end is what the verifier needs to see.
#[inline(always)]
pub fn ptr_at<T, P: Packet>(ctx: &P, offset: usize) -> Result<*mut T, ()> {
    let start = ctx.start();
    let end = ctx.end();
    let len = core::mem::size_of::<T>();
    if start + offset + len > end {
        return Err(());
    }
    Ok((start + offset) as *mut T)
}

/// Reads a `T` at `offset` (unaligned).
#[inline(always)]
pub fn load<T: Copy, P: Packet>(ctx: &P, offset: usize) -> Result<T, ()> {
    let p = ptr_at::<T, P>(ctx, offset)?;
    // SAFETY: ptr_at checked the bytes lie inside the packet.
    Ok(unsafe { core::ptr::read_unaligned(p) })
}

/// Writes a `T` at `offset` (unaligned).
#[inline(always)]
pub fn store<T: Copy, P: Packet>(ctx: &P, offset: usize, v: T) -> Result<(), ()> {
    let p = ptr_at::<T, P>(ctx, offset)?;
    // SAFETY: ptr_at checked the bytes lie inside the packet.
    unsafe { core::ptr::write_unaligned(p, v) };
    Ok(())
}

/// The EtherType of the frame, converted to host byte order.
#[inline(always)]
pub fn ethertype<P: Packet>(ctx: &P) -> Result<u16, ()> {
    Ok(u16::from_be(load::<u16, P>(ctx, 12)?))
}

/// The IPv4 protocol number of a frame whose EtherType is IPv4.
#[inline(always)]
pub fn ipv4_protocol<P: Packet>(ctx: &P) -> Result<u8, ()> {
    load::<u8, P>(ctx, ETH_HDR_LEN + ip::PROTO)
}

/// Folds a 32-bit one's complement sum to 16 bits (not complemented).
#[inline(always)]
pub fn fold(mut s: u32) -> u16 {
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// RFC 1624 incremental update of a complete checksum `check` when a 16-bit word changes.
/// All values as loaded from the packet (the arithmetic is byte-order independent).
#[inline(always)]
pub fn csum_replace2(check: u16, old: u16, new: u16) -> u16 {
    !fold(u32::from(!check) + u32::from(!old) + u32::from(new))
}

/// RFC 1624 incremental update for a 32-bit word (an address).
#[inline(always)]
pub fn csum_replace4(check: u16, old: u32, new: u32) -> u16 {
    let c = csum_replace2(check, old as u16, new as u16);
    csum_replace2(c, (old >> 16) as u16, (new >> 16) as u16)
}

/// One's complement sum of `N` 16-bit words starting at `offset` (as loaded, native order).
#[inline(always)]
pub fn sum_words<const N: usize, P: Packet>(
    ctx: &P,
    offset: usize,
    mut acc: u32,
) -> Result<u32, ()> {
    let p = ptr_at::<[u16; N], P>(ctx, offset)?;
    // SAFETY: ptr_at checked the whole range.
    let words = unsafe { core::ptr::read_unaligned(p) };
    let mut i = 0;
    while i < N {
        acc += u32::from(words[i]);
        i += 1;
    }
    Ok(acc)
}

/// The 5-tuple (and TCP flags) of a TCP or UDP IPv4 packet without options behind an
/// Ethernet header.
#[inline(always)]
pub fn tuple<P: Packet>(ctx: &P, proto: u8) -> Result<crate::nat::Tuple, ()> {
    Ok(crate::nat::Tuple {
        saddr: load(ctx, ETH_HDR_LEN + ip::SADDR)?,
        daddr: load(ctx, ETH_HDR_LEN + ip::DADDR)?,
        sport: load(ctx, L4_OFF)?,
        dport: load(ctx, L4_OFF + 2)?,
        proto,
        tcp_flags: tcp_flags(ctx, proto)?,
    })
}

/// The TCP flags of an IPv4 packet without options (0 for other protocols).
#[inline(always)]
pub fn tcp_flags<P: Packet>(ctx: &P, proto: u8) -> Result<u8, ()> {
    if proto == IPPROTO_TCP {
        load(ctx, L4_OFF + TCP_FLAGS)
    } else {
        Ok(0)
    }
}
