//! The kernel's conntrack table over netlink (ctnetlink, with `netlink-packet-netfilter`):
//! deleting UDP flows whose DNAT target no longer serves their service.
//!
//! UDP has no connection end: a client that keeps sending to a service address (DNS) keeps
//! its conntrack entry, and with it the endpoint chosen when the flow began, alive forever,
//! even after that endpoint is gone. kube-proxy's conntrack reconciler (1.32+) deletes every
//! UDP flow whose original destination is a service frontend and whose reply source (the
//! endpoint it was translated to) is not one of the service's endpoints any more; the next
//! packet then creates a new flow through the current rules. This does the same for the
//! modes that use the kernel's NAT (iptables, nftables).

use std::{
    collections::{BTreeSet, HashMap},
    net::{IpAddr, Ipv4Addr},
};

use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
    conntrack::{ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Tuple},
};
use rtnetlink::{
    packet_core::{
        DefaultNla, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
        NetlinkPayload, Nla as _,
    },
    sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER},
};

use crate::{Error, Result};

/// A UDP service port's destinations and the endpoints it may be translated to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UdpService {
    /// (address, port) frontends: cluster IP, external IPs, LB IPs.
    pub frontends: Vec<(Ipv4Addr, u16)>,
    pub node_port: Option<u16>,
    /// The serving endpoints: a flow translated to any other is stale.
    pub endpoints: BTreeSet<(Ipv4Addr, u16)>,
}

/// One direction of a flow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Direction {
    pub src: Option<Ipv4Addr>,
    pub dst: Option<Ipv4Addr>,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

const IPPROTO_UDP: u8 = 17;

fn direction(tuple: &[Tuple]) -> Direction {
    let mut d = Direction::default();
    for t in tuple {
        match t {
            Tuple::Ip(v) => {
                for a in v {
                    match a {
                        IPTuple::SourceAddress(IpAddr::V4(ip)) => d.src = Some(*ip),
                        IPTuple::DestinationAddress(IpAddr::V4(ip)) => d.dst = Some(*ip),
                        _ => {}
                    }
                }
            }
            Tuple::Proto(v) => {
                for p in v {
                    match p {
                        ProtoTuple::Protocol(p) => d.proto = u8::from(*p),
                        ProtoTuple::SourcePort(p) => d.sport = *p,
                        ProtoTuple::DestinationPort(p) => d.dport = *p,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    d
}

fn io_err(op: &'static str, e: std::io::Error) -> Error {
    Error::Io {
        op,
        path: "ctnetlink".into(),
        source: e,
    }
}

fn request(flags: u16, seq: u32, ct: ConntrackMessage) -> Vec<u8> {
    let mut h = NetlinkHeader::default();
    h.flags = NLM_F_REQUEST | flags;
    h.sequence_number = seq;
    let mut m = NetlinkMessage::new(
        h,
        NetlinkPayload::from(NetfilterMessage::new(
            NetfilterHeader::new(NetfilterProtoFamily::IPv4, 0, 0),
            ct,
        )),
    );
    m.finalize();
    let mut buf = vec![0u8; m.buffer_len()];
    m.serialize(&mut buf);
    buf
}

/// `CTA_ID`: the kernel's id of a flow; a delete carrying it only deletes that flow.
const CTA_ID: u16 = 12;

/// What a delete names: the original tuple as the kernel sent it, and the flow's id.
struct FlowKey {
    orig: Vec<Tuple>,
    id: Option<DefaultNla>,
}

/// A ctnetlink socket in the calling thread's network namespace.
struct Conn {
    sock: Socket,
    seq: u32,
}

/// What one message of an answer was.
enum Answer {
    Entry(Vec<ConntrackAttribute>),
    Done,
    /// An error (negative errno) or an ACK (0).
    Ack(i32),
    Other,
}

impl Conn {
    fn open() -> Result<Self> {
        let mut sock = Socket::new(NETLINK_NETFILTER).map_err(|e| io_err("socket", e))?;
        // A kernel that never answers must not hang the sync thread.
        nix::sys::socket::setsockopt(
            &sock,
            nix::sys::socket::sockopt::ReceiveTimeout,
            &nix::sys::time::TimeVal::new(5, 0),
        )
        .map_err(|e| io_err("setsockopt", e.into()))?;
        sock.bind_auto().map_err(|e| io_err("bind", e))?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(|e| io_err("connect", e))?;
        Ok(Self { sock, seq: 0 })
    }

    fn send(&mut self, flags: u16, ct: ConntrackMessage) -> Result<u32> {
        self.seq += 1;
        let buf = request(flags, self.seq, ct);
        self.sock.send(&buf, 0).map_err(|e| io_err("send", e))?;
        Ok(self.seq)
    }

    /// Reads answers to `seq` until `f` says stop.
    fn recv(&mut self, seq: u32, mut f: impl FnMut(Answer) -> bool) -> Result<()> {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = self
                .sock
                .recv(&mut &mut buf[..], 0)
                .map_err(|e| io_err("recv", e))?;
            let mut off = 0;
            while off < n {
                let msg = NetlinkMessage::<NetfilterMessage>::deserialize(&buf[off..n])
                    .map_err(|e| io_err("decode", std::io::Error::other(e.to_string())))?;
                let len = msg.header.length as usize;
                if len == 0 {
                    return Err(io_err(
                        "decode",
                        std::io::Error::other("a netlink message of length 0"),
                    ));
                }
                off += len.next_multiple_of(4);
                if msg.header.sequence_number != seq {
                    continue;
                }
                let a = match msg.payload {
                    NetlinkPayload::InnerMessage(NetfilterMessage {
                        inner: NetfilterMessageInner::Conntrack(ConntrackMessage::New(attrs)),
                        ..
                    }) => Answer::Entry(attrs),
                    NetlinkPayload::Done(_) => Answer::Done,
                    NetlinkPayload::Error(e) => Answer::Ack(e.code.map_or(0, |c| c.get())),
                    _ => Answer::Other,
                };
                if !f(a) {
                    return Ok(());
                }
            }
        }
    }

    /// Every IPv4 UDP flow: (its key for a delete, original, reply).
    fn dump_udp(&mut self) -> Result<Vec<(FlowKey, Direction, Direction)>> {
        let seq = self.send(NLM_F_DUMP, ConntrackMessage::Get(vec![]))?;
        let mut out = Vec::new();
        let mut err = 0;
        self.recv(seq, |a| match a {
            Answer::Entry(attrs) => {
                let (mut orig, mut reply, mut id) = (None, None, None);
                for a in attrs {
                    match a {
                        ConntrackAttribute::CtaTupleOrig(t) => orig = Some(t),
                        ConntrackAttribute::CtaTupleReply(t) => reply = Some(t),
                        ConntrackAttribute::Other(nla) if nla.kind() == CTA_ID => id = Some(nla),
                        _ => {}
                    }
                }
                if let (Some(o), Some(r)) = (orig, reply) {
                    let (od, rd) = (direction(&o), direction(&r));
                    if od.proto == IPPROTO_UDP {
                        out.push((FlowKey { orig: o, id }, od, rd));
                    }
                }
                true
            }
            Answer::Ack(e) => {
                err = e;
                false
            }
            Answer::Done => false,
            Answer::Other => true,
        })?;
        if err != 0 {
            return Err(io_err("dump", std::io::Error::from_raw_os_error(-err)));
        }
        Ok(out)
    }

    /// Deletes the flow; `false` when it was already gone (or is another flow now: the id
    /// the dump gave does not match).
    fn delete(&mut self, key: FlowKey) -> Result<bool> {
        // Never without a tuple: an empty DELETE flushes the whole table.
        if key.orig.is_empty() {
            return Ok(false);
        }
        let mut attrs = vec![ConntrackAttribute::CtaTupleOrig(key.orig)];
        attrs.extend(key.id.map(ConntrackAttribute::Other));
        let seq = self.send(NLM_F_ACK, ConntrackMessage::Delete(attrs))?;
        let mut code = 0;
        self.recv(seq, |a| match a {
            Answer::Ack(c) => {
                code = c;
                false
            }
            _ => true,
        })?;
        match -code {
            0 => Ok(true),
            e if e == nix::libc::ENOENT => Ok(false),
            e => Err(io_err("delete", std::io::Error::from_raw_os_error(e))),
        }
    }
}

/// Whether the flow (`orig`, `reply`) goes to one of the services through an endpoint that
/// does not serve it any more: to a frontend (address and port) whose reply does not come from
/// one of the service's endpoints (translated to a gone endpoint, or never translated), or to
/// a node port (on any address) translated to a gone endpoint.
pub fn is_stale(
    orig: &Direction,
    reply: &Direction,
    by_frontend: &HashMap<(Ipv4Addr, u16), &UdpService>,
    by_node_port: &HashMap<u16, &UdpService>,
) -> bool {
    let (Some(dst), Some(rsrc)) = (orig.dst, reply.src) else {
        return false;
    };
    let gone = |s: &&UdpService| !s.endpoints.contains(&(rsrc, reply.sport));
    if let Some(s) = by_frontend.get(&(dst, orig.dport)) {
        return gone(s);
    }
    // A node port: only translated flows are ours (a pod may talk to another host's port).
    let translated = rsrc != dst || reply.sport != orig.dport;
    translated && by_node_port.get(&orig.dport).is_some_and(gone)
}

/// [`delete_stale_udp`] for a sync of the kernel-NAT modes: nothing to do without UDP
/// services, failures logged (the next sync retries); the number of flows deleted.
pub fn reconcile(services: &[&UdpService]) -> u64 {
    if services.is_empty() {
        return 0;
    }
    match delete_stale_udp(services) {
        Ok(n) => {
            if n > 0 {
                tracing::debug!(flows = n, "stale UDP conntrack flows deleted");
            }
            n as u64
        }
        Err(e) => {
            tracing::warn!(error = %e, "deleting stale UDP conntrack flows");
            0
        }
    }
}

/// Deletes the UDP flows of `services` whose endpoint is gone (module docs); the number
/// deleted. Works in the calling thread's network namespace.
pub fn delete_stale_udp(services: &[&UdpService]) -> Result<usize> {
    let mut by_frontend = HashMap::new();
    let mut by_node_port = HashMap::new();
    for s in services {
        for f in &s.frontends {
            by_frontend.insert(*f, *s);
        }
        if let Some(np) = s.node_port {
            by_node_port.insert(np, *s);
        }
    }
    let mut conn = Conn::open()?;
    let flows = conn.dump_udp()?;
    let (mut deleted, mut first_err) = (0, None);
    for (key, orig, reply) in flows {
        if !is_stale(&orig, &reply, &by_frontend, &by_node_port) {
            continue;
        }
        match conn.delete(key) {
            Ok(true) => deleted += 1,
            Ok(false) => {}
            // One flow that cannot be deleted does not keep the others.
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    match first_err {
        Some(e) if deleted == 0 => Err(e),
        Some(e) => {
            tracing::warn!(error = %e, deleted, "some stale UDP flows could not be deleted");
            Ok(deleted)
        }
        None => Ok(deleted),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Direction {
        Direction {
            src: Some(src.into()),
            dst: Some(dst.into()),
            sport,
            dport,
            proto: IPPROTO_UDP,
        }
    }

    #[test]
    fn only_translated_flows_to_a_gone_endpoint_are_stale() {
        let svc = UdpService {
            frontends: vec![(Ipv4Addr::new(10, 96, 0, 10), 53)],
            node_port: Some(30053),
            endpoints: [(Ipv4Addr::new(10, 244, 1, 5), 5353)].into(),
        };
        let by_frontend: HashMap<_, _> = [((Ipv4Addr::new(10, 96, 0, 10), 53), &svc)].into();
        let by_node_port: HashMap<_, _> = [(30053, &svc)].into();
        let client = [10, 244, 2, 9];
        let check = |o: Direction, r: Direction| is_stale(&o, &r, &by_frontend, &by_node_port);
        // To the service, translated to the live endpoint: kept.
        assert!(!check(
            dir(client, 40000, [10, 96, 0, 10], 53),
            dir([10, 244, 1, 5], 5353, client, 40000)
        ));
        // Translated to an endpoint that is gone: stale.
        assert!(check(
            dir(client, 40000, [10, 96, 0, 10], 53),
            dir([10, 244, 1, 6], 5353, client, 40000)
        ));
        // Through the node port (on any address): stale too.
        assert!(check(
            dir([198, 18, 0, 100], 40000, [198, 18, 0, 11], 30053),
            dir([10, 244, 1, 6], 5353, [198, 18, 0, 11], 40000)
        ));
        // To the frontend but never translated (created before the rules): stale, as in
        // kube-proxy (the client would never reach an endpoint on that flow).
        assert!(check(
            dir(client, 40000, [10, 96, 0, 10], 53),
            dir([10, 96, 0, 10], 53, client, 40000)
        ));
        // An untranslated flow to another host's port that is a node port here: not ours.
        assert!(!check(
            dir(client, 40000, [198, 18, 0, 100], 30053),
            dir([198, 18, 0, 100], 30053, client, 40000)
        ));
        // To another address: not ours.
        assert!(!check(
            dir(client, 40000, [10, 96, 0, 11], 53),
            dir([10, 244, 1, 6], 5353, client, 40000)
        ));
    }
}
