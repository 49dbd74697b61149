//! tc (tcx) programs for traffic the socket hooks do not see.
//!
//! - `xkube_tc_pod_ingress` on a pod's host-side veth (packets from the pod): reply
//!   translation for flows this node NATed, else service DNAT with conntrack (hairpin
//!   included: a pod reaching itself through its service is SNATed to the bridge address);
//! - `xkube_tc_pod_egress` on a pod's host-side veth (packets to the pod) and
//!   `xkube_tc_uplink_egress` on the uplink: reply translation only.
//!
//! Checksums go through `bpf_l3_csum_replace`/`bpf_l4_csum_replace`, which handle the
//! partial checksums of locally generated packets.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_OK, TC_ACT_SHOT},
    macros::classifier,
    programs::TcContext,
};

use crate::{
    lb::Origin,
    nat::{self, Forward, Reply, ReplyAt, Rewrite, Tuple},
    net::{
        self, ETH_HDR_LEN, ETH_P_IP, IPPROTO_TCP, IPPROTO_UDP, L4_OFF, TCP_CHECK, UDP_CHECK, ip,
        load,
    },
};

#[classifier]
pub fn xkube_tc_pod_ingress(ctx: TcContext) -> i32 {
    // Unparseable or foreign traffic continues untouched.
    match handle(&ctx, ReplyAt::Pod, true) {
        Ok(action) => action,
        Err(()) => TC_ACT_OK as i32,
    }
}

#[classifier]
pub fn xkube_tc_pod_egress(ctx: TcContext) -> i32 {
    match handle(&ctx, ReplyAt::Pod, false) {
        Ok(action) => action,
        Err(()) => TC_ACT_OK as i32,
    }
}

#[classifier]
pub fn xkube_tc_uplink_egress(ctx: TcContext) -> i32 {
    match handle(&ctx, ReplyAt::UplinkEgress, false) {
        Ok(action) => action,
        Err(()) => TC_ACT_OK as i32,
    }
}

fn handle(ctx: &TcContext, at: ReplyAt, forward: bool) -> Result<i32, ()> {
    if net::ethertype(ctx)? != ETH_P_IP {
        return Ok(TC_ACT_OK as i32);
    }
    let vihl: u8 = load(ctx, ETH_HDR_LEN)?;
    let frag: u16 = load(ctx, ETH_HDR_LEN + ip::FRAG_OFF)?;
    if vihl != 0x45 || u16::from_be(frag) & 0x3fff != 0 {
        return Ok(TC_ACT_OK as i32);
    }
    let proto: u8 = load(ctx, ETH_HDR_LEN + ip::PROTO)?;
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return Ok(TC_ACT_OK as i32);
    }
    let t = net::tuple(ctx, proto)?;
    match nat::reply(&t, at) {
        Reply::Translate(rw) => {
            rewrite(ctx, &t, &rw)?;
            nat::count_packet(rw.rev_nat_id, u64::from(ctx.len()));
            return Ok(TC_ACT_OK as i32);
        }
        Reply::Elsewhere => return Ok(TC_ACT_OK as i32),
        Reply::None => {}
    }
    if !forward {
        return Ok(TC_ACT_OK as i32);
    }
    let Some(cfg) = nat::node_config() else {
        return Ok(TC_ACT_OK as i32);
    };
    match nat::forward(&t, Origin::Internal, &cfg) {
        Forward::NotService => Ok(TC_ACT_OK as i32),
        // Pods in the node's cgroup get EPERM from the socket hook instead; here the packet
        // can only be dropped.
        Forward::Reject => Ok(TC_ACT_SHOT as i32),
        Forward::Translate(rw) => {
            rewrite(ctx, &t, &rw)?;
            nat::count_packet(rw.rev_nat_id, u64::from(ctx.len()));
            Ok(TC_ACT_OK as i32)
        }
    }
}

fn rewrite(ctx: &TcContext, t: &Tuple, rw: &Rewrite) -> Result<(), ()> {
    let ip_check = ETH_HDR_LEN + ip::CHECK;
    let l4_check = L4_OFF
        + if t.proto == IPPROTO_TCP {
            TCP_CHECK
        } else {
            UDP_CHECK
        };
    let udp_flag = if t.proto == IPPROTO_UDP {
        u64::from(BPF_F_MARK_MANGLED_0)
    } else {
        0
    };
    let addr_flags = u64::from(BPF_F_PSEUDO_HDR) | udp_flag | 4;
    let port_flags = udp_flag | 2;
    if rw.saddr != t.saddr {
        ctx.l4_csum_replace(
            l4_check,
            u64::from(t.saddr),
            u64::from(rw.saddr),
            addr_flags,
        )
        .map_err(|_| ())?;
        ctx.l3_csum_replace(ip_check, u64::from(t.saddr), u64::from(rw.saddr), 4)
            .map_err(|_| ())?;
        ctx.store(ETH_HDR_LEN + ip::SADDR, &rw.saddr, 0)
            .map_err(|_| ())?;
    }
    if rw.daddr != t.daddr {
        ctx.l4_csum_replace(
            l4_check,
            u64::from(t.daddr),
            u64::from(rw.daddr),
            addr_flags,
        )
        .map_err(|_| ())?;
        ctx.l3_csum_replace(ip_check, u64::from(t.daddr), u64::from(rw.daddr), 4)
            .map_err(|_| ())?;
        ctx.store(ETH_HDR_LEN + ip::DADDR, &rw.daddr, 0)
            .map_err(|_| ())?;
    }
    if rw.sport != t.sport {
        ctx.l4_csum_replace(
            l4_check,
            u64::from(t.sport),
            u64::from(rw.sport),
            port_flags,
        )
        .map_err(|_| ())?;
        ctx.store(L4_OFF, &rw.sport, 0).map_err(|_| ())?;
    }
    if rw.dport != t.dport {
        ctx.l4_csum_replace(
            l4_check,
            u64::from(t.dport),
            u64::from(rw.dport),
            port_flags,
        )
        .map_err(|_| ())?;
        ctx.store(L4_OFF + 2, &rw.dport, 0).map_err(|_| ())?;
    }
    Ok(())
}
