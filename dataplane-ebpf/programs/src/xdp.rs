//! `xkube_xdp_uplink`: north-south service traffic on the node's uplink — NodePort,
//! externalIPs, LoadBalancer IPs and ClusterIPs reached from outside the cluster through a
//! route via this node.
//!
//! - local backend: DNAT and pass to the stack (which routes to the pod);
//! - remote backend: DNAT + SNAT to the node address, next hop by `bpf_fib_lookup`, `XDP_TX`
//!   back out of the uplink (or pass to the stack when the next hop is elsewhere or unknown);
//! - replies of SNATed flows arriving here are translated back the same way;
//! - a service without endpoints answers TCP with a RST and UDP with ICMP port unreachable.
//!
//! Checksums are updated incrementally: frames on a wire carry complete checksums.

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams, xdp_action::XDP_DROP,
        xdp_action::XDP_PASS, xdp_action::XDP_TX,
    },
    helpers::{bpf_fib_lookup, bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    macros::xdp,
    programs::XdpContext,
};
use xkube_common::lb::{NODE_F_FRONTEND_ON_NODE, NodeConfig};

use crate::{
    lb::{self, Origin},
    nat::{self, Forward, Reply, ReplyAt, Rewrite, Tuple},
    net::{
        self, ETH_HDR_LEN, ETH_P_IP, IP_HDR_LEN, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, L4_OFF,
        TCP_ACK, TCP_CHECK, TCP_FIN, TCP_FLAGS, TCP_RST, TCP_SYN, UDP_CHECK, csum_replace2,
        csum_replace4, ip, load, store, sum_words,
    },
};

const AF_INET: u8 = 2;

#[xdp]
pub fn xkube_xdp_uplink(ctx: XdpContext) -> u32 {
    // A frame we cannot parse is not ours to judge: the stack gets it unchanged.
    match try_uplink(&ctx) {
        Ok(action) => action,
        Err(()) => XDP_PASS,
    }
}

/// A bare pass program for the far end of a veth: native XDP_TX on a veth only delivers when
/// the peer has an XDP program too (ENVIRONMENT.md).
#[xdp]
pub fn xkube_xdp_pass(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

fn try_uplink(ctx: &XdpContext) -> Result<u32, ()> {
    if net::ethertype(ctx)? != ETH_P_IP {
        return Ok(XDP_PASS);
    }
    let vihl: u8 = load(ctx, ETH_HDR_LEN)?;
    let frag: u16 = load(ctx, ETH_HDR_LEN + ip::FRAG_OFF)?;
    // Options and fragments go to the stack (0x3fff = MF flag + fragment offset).
    if vihl != 0x45 || u16::from_be(frag) & 0x3fff != 0 {
        return Ok(XDP_PASS);
    }
    let proto: u8 = load(ctx, ETH_HDR_LEN + ip::PROTO)?;
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return Ok(XDP_PASS);
    }
    let t = net::tuple(ctx, proto)?;
    // The node config and the frontend filter are array entries (the verifier inlines those
    // lookups). With them, a packet for neither a frontend nor a translated flow costs no
    // hash lookup, except on a filter collision or as a possible reply:
    // - replies of translated flows come back either SNATed, to the node address on a SNAT
    //   port, or to this node's pod CIDR (flows of local pods translated by tc): only those
    //   are looked up in conntrack; pod addresses are never frontends;
    // - packets to the node address on other ports need no lookup at all unless a NodePort
    //   or an exact frontend could match (both known from the config);
    // - anything else is looked up as a frontend: exact when the filter does not rule the
    //   address out, then NodePort on node addresses.
    let Some(cfg) = nat::node_config() else {
        return Ok(XDP_PASS);
    };
    let to_node = t.daddr == cfg.node_addr;
    let dport = u16::from_be(t.dport);
    let snat_port = dport >= cfg.snat_port_min && dport <= cfg.snat_port_max;
    let to_pod = !to_node && nat::in_pod_cidr(t.daddr, &cfg);
    if (to_node && snat_port) || to_pod {
        if let Reply::Translate(rw) = nat::reply(&t, ReplyAt::UplinkIngress) {
            rewrite(ctx, &t, &rw)?;
            count(ctx, rw.rev_nat_id);
            return Ok(next_hop(ctx, &rw, proto));
        }
        if to_pod {
            return Ok(XDP_PASS);
        }
    }
    if to_node
        && cfg.flags & NODE_F_FRONTEND_ON_NODE == 0
        && (dport < cfg.node_port_min || dport > cfg.node_port_max)
    {
        // For the node itself (ssh, the kubelet, ...): no frontend can match.
        return Ok(XDP_PASS);
    }
    let Some(fe) = lb::lookup_external(t.daddr, t.dport, proto, &cfg) else {
        return Ok(XDP_PASS);
    };
    match nat::forward_to(&t, &fe, Origin::External, &cfg) {
        Forward::NotService => Ok(XDP_PASS),
        Forward::Reject => reject(ctx, &t, &cfg),
        Forward::Translate(rw) => {
            rewrite(ctx, &t, &rw)?;
            count(ctx, rw.rev_nat_id);
            if rw.local && rw.saddr == t.saddr {
                // The stack routes it to the local pod; the reply leaves through the uplink,
                // where the tc egress program restores the service address.
                Ok(XDP_PASS)
            } else {
                Ok(next_hop(ctx, &rw, proto))
            }
        }
    }
}

#[inline(always)]
fn count(ctx: &XdpContext, id: u16) {
    nat::count_packet(id, (ctx.data_end() - ctx.data()) as u64);
}

/// Rewrites addresses and ports from `t` to `rw`, updating the IPv4 and L4 checksums.
#[inline(always)]
fn rewrite(ctx: &XdpContext, t: &Tuple, rw: &Rewrite) -> Result<(), ()> {
    let ip_check_off = ETH_HDR_LEN + ip::CHECK;
    let l4_check_off = L4_OFF
        + if t.proto == IPPROTO_TCP {
            TCP_CHECK
        } else {
            UDP_CHECK
        };
    let mut ipc: u16 = load(ctx, ip_check_off)?;
    let mut l4c: u16 = load(ctx, l4_check_off)?;
    // UDP over IPv4 may omit its checksum (0): keep it omitted.
    let l4_on = t.proto == IPPROTO_TCP || l4c != 0;
    if rw.saddr != t.saddr {
        ipc = csum_replace4(ipc, t.saddr, rw.saddr);
        l4c = csum_replace4(l4c, t.saddr, rw.saddr);
        store(ctx, ETH_HDR_LEN + ip::SADDR, rw.saddr)?;
    }
    if rw.daddr != t.daddr {
        ipc = csum_replace4(ipc, t.daddr, rw.daddr);
        l4c = csum_replace4(l4c, t.daddr, rw.daddr);
        store(ctx, ETH_HDR_LEN + ip::DADDR, rw.daddr)?;
    }
    if rw.sport != t.sport {
        l4c = csum_replace2(l4c, t.sport, rw.sport);
        store(ctx, L4_OFF, rw.sport)?;
    }
    if rw.dport != t.dport {
        l4c = csum_replace2(l4c, t.dport, rw.dport);
        store(ctx, L4_OFF + 2, rw.dport)?;
    }
    store(ctx, ip_check_off, ipc)?;
    if l4_on {
        if t.proto == IPPROTO_UDP && l4c == 0 {
            l4c = 0xffff;
        }
        store(ctx, l4_check_off, l4c)?;
    }
    Ok(())
}

/// Sends a translated frame to its next hop: straight back out of the uplink when the FIB
/// says so (rewriting the MACs), otherwise to the stack, which forwards it.
#[inline(always)]
fn next_hop(ctx: &XdpContext, rw: &Rewrite, proto: u8) -> u32 {
    // SAFETY: FibParams is a plain C struct for which all-zero is a valid value.
    let mut p: FibParams = unsafe { core::mem::zeroed() };
    p.family = AF_INET;
    p.l4_protocol = proto;
    p.sport = rw.sport;
    p.dport = rw.dport;
    p.__bindgen_anon_1.tot_len = (ctx.data_end() - ctx.data() - ETH_HDR_LEN) as u16;
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    p.ifindex = ingress;
    p.__bindgen_anon_3.ipv4_src = rw.saddr;
    p.__bindgen_anon_4.ipv4_dst = rw.daddr;
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.ctx.cast(),
            &mut p,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    if rc != i64::from(BPF_FIB_LKUP_RET_SUCCESS) || p.ifindex != ingress {
        return XDP_PASS;
    }
    if store(ctx, 0, p.dmac).is_err() || store(ctx, 6, p.smac).is_err() {
        return XDP_PASS;
    }
    XDP_TX
}

/// Answers a packet for a service without endpoints: TCP RST or ICMP port unreachable.
fn reject(ctx: &XdpContext, t: &Tuple, cfg: &NodeConfig) -> Result<u32, ()> {
    let _ = cfg;
    if t.proto == IPPROTO_TCP {
        reject_tcp(ctx, t)
    } else {
        reject_udp(ctx, t)
    }
}

#[inline(always)]
fn swap_macs(ctx: &XdpContext) -> Result<(), ()> {
    let dst: [u8; 6] = load(ctx, 0)?;
    let src: [u8; 6] = load(ctx, 6)?;
    store(ctx, 0, src)?;
    store(ctx, 6, dst)
}

#[inline(always)]
fn ip_header(ctx: &XdpContext, tot_len: u16, proto: u8, saddr: u32, daddr: u32) -> Result<(), ()> {
    let o = ETH_HDR_LEN;
    store(ctx, o, 0x45u8)?;
    store(ctx, o + 1, 0u8)?;
    store(ctx, o + ip::TOT_LEN, tot_len.to_be())?;
    store(ctx, o + 4, 0u16)?;
    store(ctx, o + ip::FRAG_OFF, 0x4000u16.to_be())?;
    store(ctx, o + ip::TTL, 64u8)?;
    store(ctx, o + ip::PROTO, proto)?;
    store(ctx, o + ip::CHECK, 0u16)?;
    store(ctx, o + ip::SADDR, saddr)?;
    store(ctx, o + ip::DADDR, daddr)?;
    let sum = sum_words::<10, _>(ctx, o, 0)?;
    store(ctx, o + ip::CHECK, !net::fold(sum))
}

fn reject_tcp(ctx: &XdpContext, t: &Tuple) -> Result<u32, ()> {
    let flags = t.tcp_flags;
    if flags & TCP_RST != 0 {
        return Ok(XDP_DROP);
    }
    let seq = u32::from_be(load::<u32, _>(ctx, L4_OFF + 4)?);
    let ack = u32::from_be(load::<u32, _>(ctx, L4_OFF + 8)?);
    let tot_len = u16::from_be(load::<u16, _>(ctx, ETH_HDR_LEN + ip::TOT_LEN)?);
    let doff = usize::from(load::<u8, _>(ctx, L4_OFF + 12)? >> 4) * 4;
    let seg_len = usize::from(tot_len).saturating_sub(IP_HDR_LEN + doff) as u32
        + u32::from(flags & TCP_SYN != 0)
        + u32::from(flags & TCP_FIN != 0);
    // RFC 793 reset generation.
    let (rst_seq, rst_ack, rst_flags) = if flags & TCP_ACK != 0 {
        (ack, 0, TCP_RST)
    } else {
        (0, seq.wrapping_add(seg_len), TCP_RST | TCP_ACK)
    };
    // Trim to Ethernet + IPv4 + a 20-byte TCP header.
    let want = (L4_OFF + 20) as i32;
    let have = (ctx.data_end() - ctx.data()) as i32;
    if have > want && unsafe { bpf_xdp_adjust_tail(ctx.ctx, want - have) } != 0 {
        return Ok(XDP_DROP);
    }
    swap_macs(ctx)?;
    ip_header(ctx, 40, IPPROTO_TCP, t.daddr, t.saddr)?;
    store(ctx, L4_OFF, t.dport)?;
    store(ctx, L4_OFF + 2, t.sport)?;
    store(ctx, L4_OFF + 4, rst_seq.to_be())?;
    store(ctx, L4_OFF + 8, rst_ack.to_be())?;
    store(ctx, L4_OFF + 12, 5u8 << 4)?;
    store(ctx, L4_OFF + TCP_FLAGS, rst_flags)?;
    store(ctx, L4_OFF + 14, 0u16)?; // window
    store(ctx, L4_OFF + 16, 0u16)?; // checksum
    store(ctx, L4_OFF + 18, 0u16)?; // urgent
    // Pseudo-header: both addresses, protocol, TCP length (20).
    let mut sum = sum_words::<4, _>(ctx, ETH_HDR_LEN + ip::SADDR, 0)?;
    sum += u32::from(u16::from(IPPROTO_TCP).to_be()) + u32::from(20u16.to_be());
    let sum = sum_words::<10, _>(ctx, L4_OFF, sum)?;
    store(ctx, L4_OFF + TCP_CHECK, !net::fold(sum))?;
    Ok(XDP_TX)
}

/// Grows the frame by an IPv4 + ICMP header in front of the original IPv4 header and keeps
/// the original IPv4 header + 8 bytes, as RFC 792 asks.
fn reject_udp(ctx: &XdpContext, t: &Tuple) -> Result<u32, ()> {
    const GROW: usize = IP_HDR_LEN + 8;
    const TOTAL: usize = ETH_HDR_LEN + GROW + IP_HDR_LEN + 8;
    let dst: [u8; 6] = load(ctx, 0)?;
    let src: [u8; 6] = load(ctx, 6)?;
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(GROW as i32)) } != 0 {
        return Ok(XDP_DROP);
    }
    let have = (ctx.data_end() - ctx.data()) as i32;
    if have > TOTAL as i32 && unsafe { bpf_xdp_adjust_tail(ctx.ctx, TOTAL as i32 - have) } != 0 {
        return Ok(XDP_DROP);
    }
    store(ctx, 0, src)?;
    store(ctx, 6, dst)?;
    store(ctx, 12, ETH_P_IP.to_be())?;
    ip_header(
        ctx,
        (GROW + IP_HDR_LEN + 8) as u16,
        IPPROTO_ICMP,
        t.daddr,
        t.saddr,
    )?;
    let icmp = L4_OFF;
    store(ctx, icmp, 3u8)?; // destination unreachable
    store(ctx, icmp + 1, 3u8)?; // port unreachable
    store(ctx, icmp + 2, 0u16)?;
    store(ctx, icmp + 4, 0u32)?;
    let sum = sum_words::<18, _>(ctx, icmp, 0)?;
    store(ctx, icmp + 2, !net::fold(sum))?;
    Ok(XDP_TX)
}
