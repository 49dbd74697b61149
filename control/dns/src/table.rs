//! The record table every query reads: RRsets by `(name, type)`, built ahead of queries from
//! what each owner (a Service) contributes, so a query is one or two hash lookups and `Arc`
//! clones.
//!
//! An owner's records are replaced as a whole ([`Table::set_owner`]); only the RRsets it
//! touches are rebuilt, and an unchanged contribution costs one comparison. Names that hold no
//! record but have records below them (`svc.cluster.local.`, `<ns>.svc.cluster.local.`) exist:
//! they answer NOERROR without data, not NXDOMAIN (RFC 8020). Pods' addresses are kept per
//! pod for the pod records CoreDNS calls `pods verified` and for reverse lookups of pod IPs.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordSet, RecordType};

use crate::records::{self, Zone};

/// How pod names (`a-b-c-d.<ns>.pod.<zone>`) are answered (CoreDNS's `pods` option).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum PodsMode {
    /// No pod records.
    Disabled,
    /// Any well-formed name answers with the address it spells (kube-dns' behaviour, and
    /// CoreDNS's as kubeadm configures it).
    #[default]
    Insecure,
    /// Only addresses of pods that exist in that namespace.
    Verified,
}

/// What a query finds.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// RRsets for the answer section, and for the additional section (the addresses of SRV
    /// targets).
    Records {
        answers: Vec<Arc<RecordSet>>,
        additionals: Vec<Arc<RecordSet>>,
    },
    /// The name exists with other types only (NOERROR, no data).
    NoData,
    /// No such name.
    NxDomain,
}

struct Slot {
    /// `(owner, record)`, in insertion order.
    records: Vec<(Arc<str>, Record)>,
    set: Arc<RecordSet>,
}

/// The record table (one writer, the feed; readers take a lock for one lookup).
pub struct Table {
    zone: Zone,
    pods_mode: PodsMode,
    sets: HashMap<(LowerName, RecordType), Slot>,
    /// Number of records at or below each name.
    below: HashMap<LowerName, usize>,
    owned: HashMap<Arc<str>, Vec<Record>>,
    /// Pod addresses -> the `(namespace, name)` of the pods holding them.
    pod_ips: HashMap<IpAddr, BTreeSet<(String, String)>>,
    pods: HashMap<(String, String), Vec<IpAddr>>,
}

/// The owner of the zone's own records (not a valid `namespace/name`).
const APEX_OWNER: &str = "";

fn ancestors(name: &LowerName) -> impl Iterator<Item = LowerName> {
    let mut next = Some(name.clone());
    std::iter::from_fn(move || {
        let cur = next.take()?;
        if cur.num_labels() > 0 {
            next = Some(cur.base_name());
        }
        Some(cur)
    })
}

impl Table {
    /// An empty table for `zone`, holding the zone's SOA, NS and `dns-version` records and
    /// the SOA and NS of the `reverse` apexes (`in-addr.arpa.`).
    pub fn new(zone: Zone, pods_mode: PodsMode, reverse: &[Name], serial: u32) -> Self {
        let mut t = Table {
            zone,
            pods_mode,
            sets: HashMap::new(),
            below: HashMap::new(),
            owned: HashMap::new(),
            pod_ips: HashMap::new(),
            pods: HashMap::new(),
        };
        let mut apex = t.zone.apex_records(serial);
        for r in reverse {
            apex.extend(t.zone.reverse_apex_records(r, serial));
        }
        t.set_owner(APEX_OWNER, apex);
        t
    }

    /// The zone served.
    pub fn zone(&self) -> &Zone {
        &self.zone
    }

    /// Replaces what `owner` (`namespace/name` of a Service) contributes; returns whether
    /// anything changed.
    pub fn set_owner(&mut self, owner: &str, records: Vec<Record>) -> bool {
        if self.owned.get(owner).is_some_and(|old| *old == records) {
            return false;
        }
        let owner: Arc<str> = Arc::from(owner);
        let old = self.owned.remove(&owner).unwrap_or_default();
        let mut dirty: HashSet<(LowerName, RecordType)> = HashSet::new();
        for r in &old {
            let key = (LowerName::new(&r.name), r.record_type());
            if let Some(slot) = self.sets.get_mut(&key)
                && let Some(i) = slot.records.iter().position(|(o, x)| *o == owner && x == r)
            {
                slot.records.remove(i);
            }
            for a in ancestors(&key.0) {
                if let Some(n) = self.below.get_mut(&a) {
                    *n -= 1;
                    if *n == 0 {
                        self.below.remove(&a);
                    }
                }
            }
            dirty.insert(key);
        }
        for r in &records {
            let key = (LowerName::new(&r.name), r.record_type());
            self.sets
                .entry(key.clone())
                .or_insert_with(|| Slot {
                    records: Vec::new(),
                    set: Arc::new(RecordSet::with_ttl(r.name.clone(), r.record_type(), 0)),
                })
                .records
                .push((owner.clone(), r.clone()));
            for a in ancestors(&key.0) {
                *self.below.entry(a).or_default() += 1;
            }
            dirty.insert(key);
        }
        for key in dirty {
            let Some(slot) = self.sets.get_mut(&key) else {
                continue;
            };
            if slot.records.is_empty() {
                self.sets.remove(&key);
                continue;
            }
            let first = &slot.records[0].1;
            let mut set = RecordSet::with_ttl(first.name.clone(), first.record_type(), first.ttl);
            for (_, r) in &slot.records {
                set.insert(r.clone(), 0);
            }
            slot.set = Arc::new(set);
        }
        if !records.is_empty() {
            self.owned.insert(owner, records);
        }
        true
    }

    /// Removes every Service owner for which `keep` is false (after a full relist).
    pub fn retain_owners(&mut self, keep: impl Fn(&str) -> bool) {
        let gone: Vec<Arc<str>> = self
            .owned
            .keys()
            .filter(|o| &***o != APEX_OWNER && !keep(o))
            .cloned()
            .collect();
        for o in gone {
            self.set_owner(&o, Vec::new());
        }
    }

    /// Sets the addresses of pod `namespace/name` (empty: the pod is gone or has none).
    pub fn set_pod(&mut self, ns: &str, name: &str, ips: Vec<IpAddr>) {
        let key = (ns.to_string(), name.to_string());
        if self.pods.get(&key).is_some_and(|old| *old == ips) {
            return;
        }
        for ip in self.pods.remove(&key).unwrap_or_default() {
            if let Some(holders) = self.pod_ips.get_mut(&ip) {
                holders.remove(&key);
                if holders.is_empty() {
                    self.pod_ips.remove(&ip);
                }
            }
        }
        for ip in &ips {
            self.pod_ips.entry(*ip).or_default().insert(key.clone());
        }
        if !ips.is_empty() {
            self.pods.insert(key, ips);
        }
    }

    /// Forgets every pod for which `keep` is false (after a full relist).
    pub fn retain_pods(&mut self, keep: impl Fn(&str, &str) -> bool) {
        let gone: Vec<(String, String)> = self
            .pods
            .keys()
            .filter(|(ns, n)| !keep(ns, n))
            .cloned()
            .collect();
        for (ns, n) in gone {
            self.set_pod(&ns, &n, Vec::new());
        }
    }

    /// Number of RRsets.
    pub fn len(&self) -> usize {
        self.sets.len()
    }

    /// Whether the table holds no RRset (never: the apex records are always there).
    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }

    fn set(&self, name: &LowerName, t: RecordType) -> Option<Arc<RecordSet>> {
        self.sets.get(&(name.clone(), t)).map(|s| s.set.clone())
    }

    fn one(r: Record) -> Arc<RecordSet> {
        let mut set = RecordSet::with_ttl(r.name.clone(), r.record_type(), r.ttl);
        set.insert(r, 0);
        Arc::new(set)
    }

    /// What a query for `name` and `qtype` finds.
    pub fn lookup(&self, name: &LowerName, qtype: RecordType) -> Answer {
        let records = |answers: Vec<Arc<RecordSet>>| Answer::Records {
            answers,
            additionals: Vec::new(),
        };
        if qtype == RecordType::ANY {
            // The types the table holds, each looked up by key (never a scan of the table).
            let all: Vec<Arc<RecordSet>> = [
                RecordType::A,
                RecordType::AAAA,
                RecordType::CNAME,
                RecordType::SRV,
                RecordType::PTR,
                RecordType::TXT,
                RecordType::SOA,
                RecordType::NS,
            ]
            .into_iter()
            .filter_map(|t| self.set(name, t))
            .collect();
            if !all.is_empty() {
                return records(all);
            }
        } else if let Some(set) = self.set(name, qtype) {
            let mut additionals = Vec::new();
            if qtype == RecordType::SRV {
                let targets: BTreeSet<LowerName> = set
                    .records_without_rrsigs()
                    .filter_map(|r| match &r.data {
                        RData::SRV(s) => Some(LowerName::new(&s.target)),
                        _ => None,
                    })
                    .collect();
                for t in &targets {
                    additionals.extend(self.set(t, RecordType::A));
                    additionals.extend(self.set(t, RecordType::AAAA));
                }
            }
            return Answer::Records {
                answers: vec![set],
                additionals,
            };
        } else if let Some(cname) = self.set(name, RecordType::CNAME) {
            // RFC 1034 4.3.2: a CNAME answers every type; the client follows it.
            return records(vec![cname]);
        }
        if let Some(a) = self.pod_lookup(name, qtype) {
            return a;
        }
        if qtype == RecordType::PTR
            && let Some(r) = self.pod_reverse(name)
        {
            return records(vec![Self::one(r)]);
        }
        if self.below.contains_key(name) {
            Answer::NoData
        } else {
            Answer::NxDomain
        }
    }

    fn pod_lookup(&self, name: &LowerName, qtype: RecordType) -> Option<Answer> {
        if self.pods_mode == PodsMode::Disabled {
            return None;
        }
        let (ip, ns) = records::pod_query(&self.zone, name)?;
        if self.pods_mode == PodsMode::Verified
            && !self
                .pod_ips
                .get(&IpAddr::V4(ip))
                .is_some_and(|holders| holders.iter().any(|(n, _)| *n == ns))
        {
            return None;
        }
        if qtype != RecordType::A && qtype != RecordType::ANY {
            return Some(Answer::NoData);
        }
        let r = records::pod_record(&self.zone, ip, &ns)?;
        Some(Answer::Records {
            answers: vec![Self::one(r)],
            additionals: Vec::new(),
        })
    }

    /// The PTR of a pod address no Service record names.
    fn pod_reverse(&self, name: &LowerName) -> Option<Record> {
        if self.pods_mode == PodsMode::Disabled {
            return None;
        }
        let ip = reverse_ip(&Name::from(name.clone()))?;
        let (ns, _) = self.pod_ips.get(&ip)?.iter().next()?;
        records::pod_ptr(&self.zone, ip, ns)
    }
}

/// The IPv4 address an `in-addr.arpa.` name spells.
fn reverse_ip(name: &Name) -> Option<IpAddr> {
    let labels: Vec<&[u8]> = name.iter().collect();
    if labels.len() != 6
        || !labels[4].eq_ignore_ascii_case(b"in-addr")
        || !labels[5].eq_ignore_ascii_case(b"arpa")
    {
        return None;
    }
    let mut octets = [0u8; 4];
    for (i, l) in labels[..4].iter().enumerate() {
        octets[3 - i] = std::str::from_utf8(l).ok()?.parse().ok()?;
    }
    Some(IpAddr::from(octets))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_server::proto::rr::rdata::{A, SRV};
    use std::net::Ipv4Addr;
    use std::str::FromStr;

    fn n(s: &str) -> LowerName {
        LowerName::from(Name::from_str(s).expect("name"))
    }

    fn a(name: &str, ip: [u8; 4]) -> Record {
        Record::from_rdata(
            Name::from_str(name).expect("name"),
            5,
            RData::A(A(Ipv4Addr::from(ip))),
        )
    }

    fn table(mode: PodsMode) -> Table {
        let zone = Zone::new("cluster.local", 5).expect("zone");
        let rev = Name::from_str("in-addr.arpa.").expect("name");
        Table::new(zone, mode, &[rev], 1)
    }

    fn addrs(ans: &Answer) -> Vec<String> {
        let Answer::Records { answers, .. } = ans else {
            panic!("no records: {ans:?}");
        };
        let mut v: Vec<String> = answers
            .iter()
            .flat_map(|s| s.records_without_rrsigs().map(|r| r.data.to_string()))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn names_with_records_below_exist_others_are_nxdomain() {
        let mut t = table(PodsMode::Disabled);
        t.set_owner("d/web", vec![a("web.d.svc.cluster.local.", [10, 96, 0, 5])]);
        let q = |s: &str, ty| t.lookup(&n(s), ty);
        assert_eq!(
            addrs(&q("WEB.d.svc.cluster.local.", RecordType::A)),
            vec!["10.96.0.5"],
            "names compare case-insensitively"
        );
        assert_eq!(
            q("web.d.svc.cluster.local.", RecordType::AAAA),
            Answer::NoData
        );
        assert_eq!(q("d.svc.cluster.local.", RecordType::A), Answer::NoData);
        assert_eq!(q("svc.cluster.local.", RecordType::A), Answer::NoData);
        assert_eq!(
            q("nope.d.svc.cluster.local.", RecordType::A),
            Answer::NxDomain
        );
        assert_eq!(
            q("web.e.svc.cluster.local.", RecordType::A),
            Answer::NxDomain
        );
        assert!(matches!(
            q("cluster.local.", RecordType::SOA),
            Answer::Records { .. }
        ));
        assert_eq!(
            addrs(&q("dns-version.cluster.local.", RecordType::TXT)),
            vec![records::SCHEMA_VERSION.to_string()]
        );
    }

    #[test]
    fn replacing_an_owner_removes_its_old_records_and_empty_parents() {
        let mut t = table(PodsMode::Disabled);
        let h = "db.d.svc.cluster.local.";
        t.set_owner("d/db", vec![a(h, [10, 0, 0, 1]), a(h, [10, 0, 0, 2])]);
        assert_eq!(
            addrs(&t.lookup(&n(h), RecordType::A)),
            vec!["10.0.0.1", "10.0.0.2"]
        );
        assert!(t.set_owner("d/db", vec![a(h, [10, 0, 0, 2])]));
        assert_eq!(addrs(&t.lookup(&n(h), RecordType::A)), vec!["10.0.0.2"]);
        assert!(
            !t.set_owner("d/db", vec![a(h, [10, 0, 0, 2])]),
            "the same records again change nothing"
        );
        t.retain_owners(|o| o != "d/db");
        assert_eq!(t.lookup(&n(h), RecordType::A), Answer::NxDomain);
        assert_eq!(
            t.lookup(&n("d.svc.cluster.local."), RecordType::A),
            Answer::NxDomain,
            "no record left below the namespace"
        );
        assert!(
            t.lookup(&n("cluster.local."), RecordType::NS) != Answer::NxDomain,
            "the apex stays"
        );
    }

    #[test]
    fn two_owners_share_a_reverse_name() {
        let mut t = table(PodsMode::Disabled);
        let ptr = |target: &str| {
            Record::from_rdata(
                Name::from_str("5.1.244.10.in-addr.arpa.").expect("name"),
                5,
                RData::PTR(hickory_server::proto::rr::rdata::PTR(
                    Name::from_str(target).expect("name"),
                )),
            )
        };
        t.set_owner("d/a", vec![ptr("x.a.d.svc.cluster.local.")]);
        t.set_owner("d/b", vec![ptr("x.b.d.svc.cluster.local.")]);
        let q = n("5.1.244.10.in-addr.arpa.");
        assert_eq!(addrs(&t.lookup(&q, RecordType::PTR)).len(), 2);
        t.set_owner("d/a", Vec::new());
        assert_eq!(
            addrs(&t.lookup(&q, RecordType::PTR)),
            vec!["x.b.d.svc.cluster.local."]
        );
    }

    #[test]
    fn srv_answers_carry_their_targets_addresses() {
        let mut t = table(PodsMode::Disabled);
        let srv = Record::from_rdata(
            Name::from_str("_pg._tcp.db.d.svc.cluster.local.").expect("name"),
            5,
            RData::SRV(SRV::new(
                0,
                100,
                5432,
                Name::from_str("db-0.db.d.svc.cluster.local.").expect("name"),
            )),
        );
        t.set_owner(
            "d/db",
            vec![srv, a("db-0.db.d.svc.cluster.local.", [10, 244, 1, 5])],
        );
        let Answer::Records { additionals, .. } =
            t.lookup(&n("_pg._tcp.db.d.svc.cluster.local."), RecordType::SRV)
        else {
            panic!("no SRV");
        };
        assert_eq!(additionals.len(), 1);
    }

    #[test]
    fn cname_answers_other_types() {
        let mut t = table(PodsMode::Disabled);
        let c = Record::from_rdata(
            Name::from_str("ext.d.svc.cluster.local.").expect("name"),
            5,
            RData::CNAME(hickory_server::proto::rr::rdata::CNAME(
                Name::from_str("www.example.com.").expect("name"),
            )),
        );
        t.set_owner("d/ext", vec![c]);
        assert_eq!(
            addrs(&t.lookup(&n("ext.d.svc.cluster.local."), RecordType::A)),
            vec!["www.example.com."]
        );
    }

    #[test]
    fn pod_records_follow_the_mode() {
        let q = n("10-244-1-5.d.pod.cluster.local.");
        let insecure = table(PodsMode::Insecure);
        assert_eq!(
            addrs(&insecure.lookup(&q, RecordType::A)),
            vec!["10.244.1.5"]
        );
        assert_eq!(insecure.lookup(&q, RecordType::AAAA), Answer::NoData);
        assert_eq!(
            table(PodsMode::Disabled).lookup(&q, RecordType::A),
            Answer::NxDomain
        );
        let mut verified = table(PodsMode::Verified);
        assert_eq!(verified.lookup(&q, RecordType::A), Answer::NxDomain);
        let ip = IpAddr::from([10, 244, 1, 5]);
        verified.set_pod("d", "p", vec![ip]);
        assert_eq!(
            addrs(&verified.lookup(&q, RecordType::A)),
            vec!["10.244.1.5"]
        );
        assert_eq!(
            verified.lookup(&n("10-244-1-5.other.pod.cluster.local."), RecordType::A),
            Answer::NxDomain,
            "verified: the pod must be in the namespace asked for"
        );
        assert_eq!(
            addrs(&verified.lookup(&n("5.1.244.10.in-addr.arpa."), RecordType::PTR)),
            vec!["10-244-1-5.d.pod.cluster.local."]
        );
        verified.retain_pods(|_, _| false);
        assert_eq!(verified.lookup(&q, RecordType::A), Answer::NxDomain);
        assert_eq!(
            verified.lookup(&n("5.1.244.10.in-addr.arpa."), RecordType::PTR),
            Answer::NxDomain,
            "the pod is gone and no Service names the address"
        );
    }
}
