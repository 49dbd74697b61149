//! The userspace mode's backend choice, as kube-proxy's userspace round robin chose
//! (`pkg/proxy/userspace/roundrobin.go`, removed in 1.26): per service port a shuffled list of
//! endpoints taken in turn; with `sessionAffinity: ClientIP`, a client keeps its endpoint until
//! it has been idle for the affinity timeout, or until a dial to it failed (the caller asks
//! again with `reset`); when the endpoints change, the list is reshuffled and affinities to
//! endpoints that are gone are dropped. Pure: time is passed in.

use std::{
    collections::{BTreeSet, HashMap},
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

/// One client's affinity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Affinity {
    endpoint: SocketAddrV4,
    last_used: Instant,
}

/// The round robin of one service port.
#[derive(Debug, Default)]
pub struct RoundRobin {
    endpoints: Vec<SocketAddrV4>,
    next: usize,
    /// `Some(timeout)` with `sessionAffinity: ClientIP`.
    affinity: Option<Duration>,
    clients: HashMap<Ipv4Addr, Affinity>,
}

impl RoundRobin {
    pub fn new(affinity: Option<Duration>) -> Self {
        Self {
            affinity,
            ..Self::default()
        }
    }

    /// The endpoints now serving the port (usable ones, as the model orders them); a changed
    /// set is reshuffled with `shuffle` (a permutation of the indices) and the round starts
    /// again. An unchanged set keeps the order, position and affinities.
    pub fn set_endpoints(
        &mut self,
        endpoints: &[SocketAddrV4],
        shuffle: impl FnOnce(&mut [SocketAddrV4]),
    ) {
        let old: BTreeSet<&SocketAddrV4> = self.endpoints.iter().collect();
        let new: BTreeSet<&SocketAddrV4> = endpoints.iter().collect();
        if old == new {
            return;
        }
        let mut list: Vec<SocketAddrV4> = new.into_iter().copied().collect();
        shuffle(&mut list);
        self.clients.retain(|_, a| list.contains(&a.endpoint));
        self.endpoints = list;
        self.next = 0;
    }

    /// Changes the affinity timeout (`None`: no affinity; every affinity is dropped).
    pub fn set_affinity(&mut self, affinity: Option<Duration>) {
        if affinity.is_none() {
            self.clients.clear();
        }
        self.affinity = affinity;
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// The endpoint for a new connection (or datagram flow) from `client` at `now`; `None`
    /// without endpoints. `reset`: the last endpoint given to this client failed, take the
    /// next one and forget the affinity.
    pub fn next(&mut self, client: Ipv4Addr, reset: bool, now: Instant) -> Option<SocketAddrV4> {
        if self.endpoints.is_empty() {
            return None;
        }
        if let Some(ttl) = self.affinity
            && !reset
            && let Some(a) = self.clients.get_mut(&client)
            && now.saturating_duration_since(a.last_used) < ttl
        {
            a.last_used = now;
            return Some(a.endpoint);
        }
        let ep = self.endpoints[self.next % self.endpoints.len()];
        self.next = (self.next + 1) % self.endpoints.len();
        if self.affinity.is_some() {
            self.clients.insert(
                client,
                Affinity {
                    endpoint: ep,
                    last_used: now,
                },
            );
        }
        Some(ep)
    }

    /// Drops affinities idle for longer than the timeout (periodic housekeeping).
    pub fn expire(&mut self, now: Instant) {
        if let Some(ttl) = self.affinity {
            self.clients
                .retain(|_, a| now.saturating_duration_since(a.last_used) < ttl);
        }
    }

    /// Whether `endpoint` is one of the port's endpoints now.
    pub fn contains(&self, endpoint: SocketAddrV4) -> bool {
        self.endpoints.contains(&endpoint)
    }

    /// Clients with an affinity (for metrics and tests).
    pub fn affinities(&self) -> usize {
        self.clients.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(last: u8) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, last), 8080)
    }

    fn client(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 0, last)
    }

    fn keep(_: &mut [SocketAddrV4]) {}

    #[test]
    fn endpoints_are_taken_in_turn_and_an_empty_port_has_none() {
        let mut rr = RoundRobin::new(None);
        let now = Instant::now();
        assert_eq!(rr.next(client(1), false, now), None);
        rr.set_endpoints(&[ep(1), ep(2), ep(3)], keep);
        let got: Vec<_> = (0..6).map(|_| rr.next(client(1), false, now)).collect();
        assert_eq!(
            got,
            [ep(1), ep(2), ep(3), ep(1), ep(2), ep(3)].map(Some),
            "round robin, whatever the client"
        );
    }

    #[test]
    fn a_changed_set_is_reshuffled_and_an_unchanged_one_keeps_its_turn() {
        let mut rr = RoundRobin::new(None);
        let now = Instant::now();
        rr.set_endpoints(&[ep(1), ep(2), ep(3)], keep);
        assert_eq!(rr.next(client(1), false, now), Some(ep(1)));
        // The same set in another order is no change.
        rr.set_endpoints(&[ep(3), ep(2), ep(1)], |_| panic!("no reshuffle"));
        assert_eq!(rr.next(client(1), false, now), Some(ep(2)));
        // A new set: shuffled, and the round starts again.
        rr.set_endpoints(&[ep(1), ep(2), ep(4)], |l| l.reverse());
        let got: Vec<_> = (0..3).map(|_| rr.next(client(1), false, now)).collect();
        assert_eq!(got, [ep(4), ep(2), ep(1)].map(Some));
    }

    #[test]
    fn client_ip_affinity_sticks_until_idle_for_the_timeout_or_reset() {
        let ttl = Duration::from_secs(10);
        let mut rr = RoundRobin::new(Some(ttl));
        let t0 = Instant::now();
        rr.set_endpoints(&[ep(1), ep(2), ep(3)], keep);
        assert_eq!(rr.next(client(1), false, t0), Some(ep(1)));
        assert_eq!(rr.next(client(2), false, t0), Some(ep(2)));
        // Used within the timeout: the same endpoint, and the timeout starts again.
        for s in [5, 10, 15] {
            let t = t0 + Duration::from_secs(s);
            assert_eq!(rr.next(client(1), false, t), Some(ep(1)));
        }
        // A failed dial resets it.
        let t = t0 + Duration::from_secs(16);
        assert_eq!(rr.next(client(1), true, t), Some(ep(3)));
        assert_eq!(rr.next(client(1), false, t), Some(ep(3)));
        // Idle for the timeout: a new turn.
        let late = t + ttl;
        assert_eq!(rr.next(client(1), false, late), Some(ep(1)));
        rr.expire(late);
        assert_eq!(rr.affinities(), 1, "client 2 idle since t0 expired");
    }

    #[test]
    fn affinities_to_endpoints_that_went_away_are_dropped() {
        let mut rr = RoundRobin::new(Some(Duration::from_secs(100)));
        let now = Instant::now();
        rr.set_endpoints(&[ep(1), ep(2)], keep);
        assert_eq!(rr.next(client(1), false, now), Some(ep(1)));
        assert_eq!(rr.next(client(2), false, now), Some(ep(2)));
        rr.set_endpoints(&[ep(2), ep(3)], keep);
        assert_eq!(rr.affinities(), 1);
        assert_eq!(rr.next(client(2), false, now), Some(ep(2)), "kept");
        assert_ne!(rr.next(client(1), false, now), Some(ep(1)));
        rr.set_affinity(None);
        assert_eq!(rr.affinities(), 0);
    }
}
