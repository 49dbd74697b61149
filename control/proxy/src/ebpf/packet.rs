//! Crafting and checking Ethernet/IPv4/TCP/UDP frames for `BPF_PROG_TEST_RUN` and benchmarks.
//!
//! Everything here is plain bytes in network order; checksums are computed and verified the
//! way the kernel would (RFC 1071 one's complement, the L4 checksum over the pseudo-header).

use std::net::Ipv4Addr;

pub const ETH_HLEN: usize = 14;
pub const IPV4_HLEN: usize = 20;
pub const UDP_HLEN: usize = 8;
pub const TCP_HLEN: usize = 20;
pub const ETH_P_IP: u16 = 0x0800;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMP: u8 = 1;

/// TCP flag bits.
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

/// A transport endpoint as carried in a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    pub port: u16,
}

impl Endpoint {
    pub const fn new(ip: Ipv4Addr, port: u16) -> Self {
        Self { ip, port }
    }
}

/// The L4 part of a frame to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    Udp,
    Tcp { flags: u8 },
}

/// A frame to build: MACs, endpoints, protocol and payload.
#[derive(Debug, Clone)]
pub struct Frame<'a> {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: Endpoint,
    pub dst: Endpoint,
    pub l4: L4,
    pub ttl: u8,
    pub payload: &'a [u8],
}

impl<'a> Frame<'a> {
    /// A UDP frame between locally administered MACs.
    pub fn udp(src: Endpoint, dst: Endpoint, payload: &'a [u8]) -> Self {
        Self {
            src_mac: [0x02, 0, 0, 0, 0, 1],
            dst_mac: [0x02, 0, 0, 0, 0, 2],
            src,
            dst,
            l4: L4::Udp,
            ttl: 64,
            payload,
        }
    }

    /// A TCP frame with `flags` between locally administered MACs.
    pub fn tcp(src: Endpoint, dst: Endpoint, flags: u8, payload: &'a [u8]) -> Self {
        Self {
            l4: L4::Tcp { flags },
            ..Self::udp(src, dst, payload)
        }
    }

    /// Serialises the frame with correct IPv4 and L4 checksums.
    pub fn build(&self) -> Vec<u8> {
        let (proto, l4_len) = match self.l4 {
            L4::Udp => (IPPROTO_UDP, UDP_HLEN),
            L4::Tcp { .. } => (IPPROTO_TCP, TCP_HLEN),
        };
        let ip_total = IPV4_HLEN + l4_len + self.payload.len();
        let mut p = Vec::with_capacity(ETH_HLEN + ip_total);
        p.extend_from_slice(&self.dst_mac);
        p.extend_from_slice(&self.src_mac);
        p.extend_from_slice(&ETH_P_IP.to_be_bytes());
        // IPv4 header, no options, DF set.
        p.push(0x45);
        p.push(0);
        p.extend_from_slice(&(ip_total as u16).to_be_bytes());
        p.extend_from_slice(&0x1234u16.to_be_bytes());
        p.extend_from_slice(&0x4000u16.to_be_bytes());
        p.push(self.ttl);
        p.push(proto);
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(&self.src.ip.octets());
        p.extend_from_slice(&self.dst.ip.octets());
        let ip_csum = checksum(&p[ETH_HLEN..ETH_HLEN + IPV4_HLEN]);
        p[ETH_HLEN + 10..ETH_HLEN + 12].copy_from_slice(&ip_csum.to_be_bytes());
        let l4_start = p.len();
        p.extend_from_slice(&self.src.port.to_be_bytes());
        p.extend_from_slice(&self.dst.port.to_be_bytes());
        match self.l4 {
            L4::Udp => {
                p.extend_from_slice(&((UDP_HLEN + self.payload.len()) as u16).to_be_bytes());
                p.extend_from_slice(&[0, 0]);
            }
            L4::Tcp { flags } => {
                p.extend_from_slice(&1000u32.to_be_bytes()); // seq
                let ack = if flags & tcp_flags::ACK != 0 {
                    2000u32
                } else {
                    0
                };
                p.extend_from_slice(&ack.to_be_bytes());
                p.push((TCP_HLEN as u8 / 4) << 4);
                p.push(flags);
                p.extend_from_slice(&64240u16.to_be_bytes()); // window
                p.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
            }
        }
        p.extend_from_slice(self.payload);
        let csum = l4_checksum(self.src.ip, self.dst.ip, proto, &p[l4_start..]);
        let off = l4_start + l4_checksum_offset(proto);
        p[off..off + 2].copy_from_slice(&csum.to_be_bytes());
        p
    }
}

fn l4_checksum_offset(proto: u8) -> usize {
    if proto == IPPROTO_TCP { 16 } else { 6 }
}

/// RFC 1071 Internet checksum of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum16(data, 0))
}

fn sum16(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

fn pseudo_sum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> u32 {
    let mut acc = sum16(&src.octets(), 0);
    acc = sum16(&dst.octets(), acc);
    acc + u32::from(proto) + len as u32
}

/// The TCP/UDP checksum of `segment` (header + payload, checksum field zeroed or not: a
/// segment whose checksum is correct sums to zero, see [`Parsed::l4_checksum_ok`]).
pub fn l4_checksum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, segment: &[u8]) -> u16 {
    let c = !fold(sum16(segment, pseudo_sum(src, dst, proto, segment.len())));
    // UDP transmits an all-zero checksum as 0xffff (0 means "no checksum").
    if proto == IPPROTO_UDP && c == 0 {
        0xffff
    } else {
        c
    }
}

/// The fields of a parsed Ethernet/IPv4 frame that tests look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub proto: u8,
    pub ttl: u8,
    pub src: Endpoint,
    pub dst: Endpoint,
    /// TCP flags, 0 for other protocols.
    pub tcp_flags: u8,
    pub ip_checksum_ok: bool,
    pub l4_checksum_ok: bool,
    pub payload: Vec<u8>,
}

/// Parses an Ethernet/IPv4/(TCP|UDP|ICMP) frame. `None` for anything else or a truncated frame.
pub fn parse(p: &[u8]) -> Option<Parsed> {
    if p.len() < ETH_HLEN + IPV4_HLEN || u16::from_be_bytes([p[12], p[13]]) != ETH_P_IP {
        return None;
    }
    let ip = &p[ETH_HLEN..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if ip[0] >> 4 != 4 || ihl < IPV4_HLEN || total > ip.len() || total < ihl {
        return None;
    }
    let proto = ip[9];
    let src_ip = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst_ip = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let seg = &ip[ihl..total];
    let (sport, dport, flags, hlen) = match proto {
        IPPROTO_UDP if seg.len() >= UDP_HLEN => (
            u16::from_be_bytes([seg[0], seg[1]]),
            u16::from_be_bytes([seg[2], seg[3]]),
            0,
            UDP_HLEN,
        ),
        IPPROTO_TCP if seg.len() >= TCP_HLEN => (
            u16::from_be_bytes([seg[0], seg[1]]),
            u16::from_be_bytes([seg[2], seg[3]]),
            seg[13],
            usize::from(seg[12] >> 4) * 4,
        ),
        IPPROTO_ICMP if seg.len() >= 8 => (0, 0, 0, 8),
        _ => return None,
    };
    let l4_ok = match proto {
        IPPROTO_ICMP => fold(sum16(seg, 0)) == 0xffff,
        _ => fold(sum16(seg, pseudo_sum(src_ip, dst_ip, proto, seg.len()))) == 0xffff,
    };
    Some(Parsed {
        src_mac: p[6..12].try_into().ok()?,
        dst_mac: p[0..6].try_into().ok()?,
        proto,
        ttl: ip[8],
        src: Endpoint::new(src_ip, sport),
        dst: Endpoint::new(dst_ip, dport),
        tcp_flags: flags,
        ip_checksum_ok: fold(sum16(&ip[..ihl], 0)) == 0xffff,
        l4_checksum_ok: l4_ok,
        payload: seg.get(hlen..)?.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(a: u8, port: u16) -> Endpoint {
        Endpoint::new(Ipv4Addr::new(10, 0, 0, a), port)
    }

    #[test]
    fn built_udp_and_tcp_frames_parse_back_with_valid_checksums() {
        for frame in [
            Frame::udp(ep(1, 1234), ep(2, 53), b"query"),
            Frame::tcp(ep(1, 40000), ep(2, 80), tcp_flags::SYN, b""),
            Frame::tcp(ep(1, 40000), ep(2, 80), tcp_flags::ACK, b"odd"),
        ] {
            let bytes = frame.build();
            let p = parse(&bytes).expect("parses");
            assert_eq!(p.src, frame.src);
            assert_eq!(p.dst, frame.dst);
            assert_eq!(p.payload, frame.payload);
            assert!(p.ip_checksum_ok && p.l4_checksum_ok, "{p:?}");
        }
    }

    #[test]
    fn a_flipped_byte_breaks_the_checksums() {
        let mut bytes = Frame::udp(ep(1, 1), ep(2, 2), b"x").build();
        bytes[ETH_HLEN + 16] ^= 1; // destination address
        let p = parse(&bytes).expect("parses");
        assert!(!p.ip_checksum_ok);
        assert!(!p.l4_checksum_ok);
    }

    #[test]
    fn checksum_matches_rfc1071_example() {
        // RFC 1071 section 3 example: sum 0xddf2, checksum 0x220d.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(&data), 0x220d);
    }

    #[test]
    fn non_ipv4_frames_do_not_parse() {
        let mut bytes = Frame::udp(ep(1, 1), ep(2, 2), b"").build();
        bytes[12] = 0x86;
        bytes[13] = 0xdd;
        assert!(parse(&bytes).is_none());
        assert!(parse(&bytes[..20]).is_none());
    }
}
