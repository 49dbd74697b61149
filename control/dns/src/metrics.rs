//! The DNS server's metrics in Prometheus text format, named after CoreDNS's
//! (`coredns_dns_requests_total`, `..._responses_total`, `..._request_duration_seconds`,
//! `coredns_cache_hits_total`) under `xkube_dns_`. Every query updates them with atomic adds
//! (no lock on the query path); a scrape renders them.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::rr::RecordType;

/// Query types counted on their own; the rest count as `other`.
const TYPES: [(RecordType, &str); 9] = [
    (RecordType::A, "A"),
    (RecordType::AAAA, "AAAA"),
    (RecordType::SRV, "SRV"),
    (RecordType::PTR, "PTR"),
    (RecordType::CNAME, "CNAME"),
    (RecordType::TXT, "TXT"),
    (RecordType::SOA, "SOA"),
    (RecordType::NS, "NS"),
    (RecordType::ANY, "ANY"),
];
const OTHER_TYPE: usize = TYPES.len();

const RCODES: [(ResponseCode, &str); 6] = [
    (ResponseCode::NoError, "NOERROR"),
    (ResponseCode::FormErr, "FORMERR"),
    (ResponseCode::ServFail, "SERVFAIL"),
    (ResponseCode::NXDomain, "NXDOMAIN"),
    (ResponseCode::NotImp, "NOTIMP"),
    (ResponseCode::Refused, "REFUSED"),
];
const OTHER_RCODE: usize = RCODES.len();

const PROTOS: [&str; 2] = ["udp", "tcp"];

/// CoreDNS's request-duration buckets: 0.25 ms doubling, 16 buckets (to 8.192 s).
fn buckets() -> [f64; 16] {
    std::array::from_fn(|i| 0.00025 * f64::from(1u32 << i))
}

/// A cumulative histogram updated with atomic adds.
struct Histogram {
    bounds: [f64; 16],
    counts: [AtomicU64; 16],
    /// Sum in nanoseconds.
    sum_ns: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new() -> Self {
        Histogram {
            bounds: buckets(),
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        // Only the first bucket that holds the value is counted; render() accumulates.
        if let Some(i) = self.bounds.iter().position(|b| secs <= *b) {
            self.counts[i].fetch_add(1, Relaxed);
        }
        self.sum_ns
            .fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut acc = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            acc += c.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {acc}");
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_ns.load(Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// The server's counters (shared by the query path and the scrape handler).
pub struct Metrics {
    requests: [[AtomicU64; OTHER_TYPE + 1]; 2],
    responses: [AtomicU64; OTHER_RCODE + 1],
    duration: Histogram,
    hits: AtomicU64,
    misses: AtomicU64,
    records: AtomicU64,
    updates: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Metrics {
            requests: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            responses: std::array::from_fn(|_| AtomicU64::new(0)),
            duration: Histogram::new(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            records: AtomicU64::new(0),
            updates: AtomicU64::new(0),
        }
    }

    /// One answered query.
    pub fn query(&self, tcp: bool, qtype: RecordType, rcode: ResponseCode, took: Duration) {
        let t = TYPES
            .iter()
            .position(|(r, _)| *r == qtype)
            .unwrap_or(OTHER_TYPE);
        self.requests[usize::from(tcp)][t].fetch_add(1, Relaxed);
        let r = RCODES
            .iter()
            .position(|(c, _)| *c == rcode)
            .unwrap_or(OTHER_RCODE);
        self.responses[r].fetch_add(1, Relaxed);
        self.duration.observe(took);
    }

    /// A query of the served zones answered from the record table (`hit`) or not.
    pub fn table(&self, hit: bool) {
        if hit { &self.hits } else { &self.misses }.fetch_add(1, Relaxed);
    }

    /// The table was updated and holds `rrsets` RRsets.
    pub fn updated(&self, rrsets: usize) {
        self.records
            .store(u64::try_from(rrsets).unwrap_or(u64::MAX), Relaxed);
        self.updates.fetch_add(1, Relaxed);
    }

    /// Queries answered so far.
    pub fn queries(&self) -> u64 {
        self.duration.count.load(Relaxed)
    }

    pub fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP xkube_dns_requests_total Queries by transport and type.\n# TYPE xkube_dns_requests_total counter"
        );
        for (p, proto) in PROTOS.iter().enumerate() {
            let names = TYPES.iter().map(|(_, n)| *n).chain(["other"]);
            for (i, ty) in names.enumerate() {
                let v = self.requests[p][i].load(Relaxed);
                let _ = writeln!(
                    out,
                    "xkube_dns_requests_total{{proto=\"{proto}\",type=\"{ty}\"}} {v}"
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP xkube_dns_responses_total Responses by rcode.\n# TYPE xkube_dns_responses_total counter"
        );
        let names = RCODES.iter().map(|(_, n)| *n).chain(["other"]);
        for (i, rc) in names.enumerate() {
            let v = self.responses[i].load(Relaxed);
            let _ = writeln!(out, "xkube_dns_responses_total{{rcode=\"{rc}\"}} {v}");
        }
        self.duration.render(
            "xkube_dns_request_duration_seconds",
            "Time from a query's arrival to its response being sent.",
            out,
        );
        for (name, help, v) in [
            (
                "xkube_dns_cache_hits_total",
                "Queries of the cluster zones answered with records from the table.",
                &self.hits,
            ),
            (
                "xkube_dns_cache_misses_total",
                "Queries of the cluster zones the table had no records for (NXDOMAIN, NODATA, forwarded).",
                &self.misses,
            ),
            (
                "xkube_dns_table_updates_total",
                "Changes applied to the record table.",
                &self.updates,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP xkube_dns_table_rrsets RRsets in the record table.\n# TYPE xkube_dns_table_rrsets gauge\nxkube_dns_table_rrsets {}",
            self.records.load(Relaxed)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_render_by_type_rcode_and_latency_bucket() {
        let m = Metrics::new();
        m.query(
            false,
            RecordType::A,
            ResponseCode::NoError,
            Duration::from_micros(100),
        );
        m.query(
            true,
            RecordType::MX,
            ResponseCode::NXDomain,
            Duration::from_millis(3),
        );
        m.table(true);
        let mut out = String::new();
        m.render(&mut out);
        for want in [
            "xkube_dns_requests_total{proto=\"udp\",type=\"A\"} 1\n",
            "xkube_dns_requests_total{proto=\"tcp\",type=\"other\"} 1\n",
            "xkube_dns_responses_total{rcode=\"NXDOMAIN\"} 1\n",
            "xkube_dns_request_duration_seconds_bucket{le=\"0.00025\"} 1\n",
            "xkube_dns_request_duration_seconds_bucket{le=\"0.002\"} 1\n",
            "xkube_dns_request_duration_seconds_bucket{le=\"0.004\"} 2\n",
            "xkube_dns_request_duration_seconds_bucket{le=\"+Inf\"} 2\n",
            "xkube_dns_request_duration_seconds_count 2\n",
            "xkube_dns_cache_hits_total 1\n",
        ] {
            assert!(out.contains(want), "missing {want:?} in\n{out}");
        }
        assert_eq!(m.queries(), 2);
    }
}
