//! Socket-level load balancing (cgroup sock_addr hooks): a connect or send to a service
//! address goes straight to a backend, with no per-packet NAT. UDP replies and `getpeername`
//! show the service address again.

use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use xkube_common::lb::{IPPROTO_TCP, IPPROTO_UDP, SockRevNatKey, SockRevNatValue};

use crate::{
    lb::{self, Count, Flow, Origin},
    maps::XKUBE_SOCK_REVNAT,
};

/// cgroup sock_addr verdicts.
const ALLOW: i32 = 1;
/// The connect/send fails with EPERM: the service has no endpoints.
const REJECT: i32 = 0;

#[cgroup_sock_addr(connect4)]
pub fn xkube_sock_connect4(ctx: SockAddrContext) -> i32 {
    verdict(translate(&ctx))
}

#[cgroup_sock_addr(sendmsg4)]
pub fn xkube_sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    verdict(translate(&ctx))
}

/// The verifier wants the return value provably 0 or 1, so map to constants here. Never break
/// a connection because of our own failure: an error allows it untranslated.
#[inline(always)]
fn verdict(r: Result<bool, ()>) -> i32 {
    match r {
        Ok(false) => REJECT,
        Ok(true) | Err(()) => ALLOW,
    }
}

#[cgroup_sock_addr(recvmsg4)]
pub fn xkube_sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    reverse(&ctx);
    ALLOW
}

#[cgroup_sock_addr(getpeername4)]
pub fn xkube_sock_getpeername4(ctx: SockAddrContext) -> i32 {
    reverse(&ctx);
    ALLOW
}

#[inline(always)]
fn sa(ctx: &SockAddrContext) -> *mut bpf_sock_addr {
    ctx.sock_addr
}

/// `Ok(true)`: allow (translated or not a service); `Ok(false)`: reject.
fn translate(ctx: &SockAddrContext) -> Result<bool, ()> {
    let sa = sa(ctx);
    // SAFETY: the context is valid for the program's run; 4-byte loads of these fields are
    // what the verifier allows.
    let (proto, addr, port) = unsafe { ((*sa).protocol, (*sa).user_ip4, (*sa).user_port) };
    let proto = proto as u8;
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return Ok(true);
    }
    // user_port keeps the port in network order in its low 16 bits.
    let port = port as u16;
    let Some(fe) = lb::lookup(addr, port, proto, Origin::Internal) else {
        return Ok(true);
    };
    let id = fe.svc.rev_nat_id;
    // ClientIP affinity at the socket layer keys on the client's network namespace: every pod
    // has its own, and the source address is not chosen yet at connect time.
    let netns = unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) };
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let flow = Flow {
        client: (netns ^ (netns >> 32)) as u32,
        src: cookie as u32,
        dst: addr,
        sport: (cookie >> 32) as u16,
        dport: port,
        proto,
    };
    let Some((_, backend)) = lb::select(&fe, &flow) else {
        lb::count(id, Count::Rejected);
        return Ok(false);
    };
    let key = SockRevNatKey {
        cookie,
        addr: backend.addr,
        port: backend.port,
        _pad: 0,
    };
    let value = SockRevNatValue {
        addr,
        port,
        rev_nat_id: id,
    };
    XKUBE_SOCK_REVNAT.insert(&key, &value, 0).map_err(|_| ())?;
    // SAFETY: writes of user_ip4/user_port are allowed in connect4 and sendmsg4.
    unsafe {
        (*sa).user_ip4 = backend.addr;
        (*sa).user_port = u32::from(backend.port);
    }
    lb::count(id, Count::Connection);
    Ok(true)
}

fn reverse(ctx: &SockAddrContext) {
    let sa = sa(ctx);
    // SAFETY: as in `translate`.
    let (addr, port) = unsafe { ((*sa).user_ip4, (*sa).user_port) };
    let key = SockRevNatKey {
        cookie: unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) },
        addr,
        port: port as u16,
        _pad: 0,
    };
    if let Some(v) = unsafe { XKUBE_SOCK_REVNAT.get(&key) } {
        let (svc_addr, svc_port) = (v.addr, v.port);
        // SAFETY: writes of user_ip4/user_port are allowed in recvmsg4 and getpeername4.
        unsafe {
            (*sa).user_ip4 = svc_addr;
            (*sa).user_port = u32::from(svc_port);
        }
    }
}
