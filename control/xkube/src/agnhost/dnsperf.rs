//! `xkube agnhost dnsperf`: a DNS load generator, bounded in queries (`--count`) and in time
//! (`--duration`), whichever comes first.
//!
//! `--concurrency` workers each ask one query at a time (a closed loop, as the dnsperf tool's
//! clients) for a name picked at random from the list: `--names FILE` (one per line; a name
//! without a trailing dot is taken as absolute), or `--prefix P --services N` for
//! `P0 .. P{N-1}` in `--namespace` (`<P><i>.<namespace>.svc.<cluster-domain>.`). Over UDP a
//! worker keeps one connected socket (query ids tell late answers apart); over TCP one
//! connection, through hickory's client. Messages are built and parsed by hickory-proto.
//!
//! A query counts as answered when a NOERROR answer with at least one record comes back
//! within `--timeout`; anything else (timeout, another rcode, no records, an I/O error) is an
//! error. Latency is from send to the parsed answer, in an HDR histogram (µs, 3 significant
//! digits). The report is one `key: value` per line (or `--json`): queries, answered,
//! errors (and per kind), seconds, qps, p50/p90/p99/p99.9/max in µs.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    str::FromStr as _,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use hickory_server::{
    net::{
        client::{Client, ClientHandle as _},
        runtime::TokioRuntimeProvider,
        tcp::TcpClientStream,
    },
    proto::{
        op::{Message, Query, ResponseCode},
        rr::{DNSClass, Name, RecordType},
    },
};
use rand::{Rng as _, SeedableRng as _, rngs::StdRng};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use xkube_bench::stats;

use super::dig::ResolvConf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// DNS server address (default: the first `nameserver` of /etc/resolv.conf).
    #[arg(long)]
    server: Option<IpAddr>,
    /// DNS server port.
    #[arg(long, default_value_t = 53)]
    port: u16,
    /// Query over TCP (one connection per worker) instead of UDP.
    #[arg(long)]
    tcp: bool,
    /// File of names to ask, one per line (`#` comments).
    #[arg(long, conflicts_with = "prefix")]
    names: Option<PathBuf>,
    /// Ask for `<prefix><i>.<namespace>.svc.<cluster-domain>.` with i in 0..--services.
    #[arg(long, requires = "services")]
    prefix: Option<String>,
    /// How many names `--prefix` makes.
    #[arg(long)]
    services: Option<usize>,
    /// The namespace of the `--prefix` names.
    #[arg(long, default_value = "default")]
    namespace: String,
    /// The cluster domain of the `--prefix` names.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// Record type asked.
    #[arg(long = "type", default_value = "A")]
    record_type: String,
    /// At most this many queries in all.
    #[arg(long, default_value_t = 100_000)]
    count: u64,
    /// At most this long (seconds).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Queries in flight (one per worker).
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Time a query may take before it counts as an error.
    #[arg(long, default_value = "1s", value_parser = xkube_api::duration::parse)]
    timeout: Duration,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

/// The names to ask, absolute.
fn names(args: &Args) -> anyhow::Result<Vec<Name>> {
    let raw: Vec<String> = match (&args.names, &args.prefix, args.services) {
        (Some(file), _, _) => std::fs::read_to_string(file)
            .with_context(|| format!("reading {}", file.display()))?
            .lines()
            .map(|l| l.split('#').next().unwrap_or_default().trim())
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect(),
        (None, Some(prefix), Some(n)) => (0..n)
            .map(|i| {
                format!(
                    "{prefix}{i}.{}.svc.{}",
                    args.namespace,
                    args.cluster_domain.trim_end_matches('.')
                )
            })
            .collect(),
        _ => bail!("give --names FILE or --prefix P --services N"),
    };
    if raw.is_empty() {
        bail!("no names to ask");
    }
    raw.iter()
        .map(|n| {
            let fqdn = if n.ends_with('.') {
                n.clone()
            } else {
                format!("{n}.")
            };
            Name::from_str(&fqdn).with_context(|| format!("name {n:?}"))
        })
        .collect()
}

/// Why a query failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Failure {
    Timeout,
    Io,
    /// The rcode (`ResponseCode` is not `Ord`).
    Rcode(u16),
    NoRecords,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Timeout => f.write_str("timeout"),
            Failure::Io => f.write_str("io"),
            Failure::Rcode(r) => write!(
                f,
                "rcode_{}",
                super::dig::rcode_name(<ResponseCode as From<u16>>::from(*r)).to_ascii_lowercase()
            ),
            Failure::NoRecords => f.write_str("no_records"),
        }
    }
}

fn judge(rcode: ResponseCode, answers: usize) -> Result<(), Failure> {
    match (rcode, answers) {
        (ResponseCode::NoError, 0) => Err(Failure::NoRecords),
        (ResponseCode::NoError, _) => Ok(()),
        (r, _) => Err(Failure::Rcode(r.into())),
    }
}

/// One worker's transport.
enum Conn {
    Udp { sock: UdpSocket, buf: Vec<u8> },
    Tcp(Client<TokioRuntimeProvider>),
}

impl Conn {
    async fn open(server: SocketAddr, tcp: bool, timeout: Duration) -> anyhow::Result<Self> {
        if tcp {
            let provider = TokioRuntimeProvider::default();
            let (connect, handle) = TcpClientStream::new(server, None, Some(timeout), provider);
            let stream = connect
                .await
                .with_context(|| format!("TCP connection to {server}"))?;
            let (c, bg) = Client::<TokioRuntimeProvider>::with_timeout(stream, handle, timeout);
            tokio::spawn(bg);
            Ok(Conn::Tcp(c))
        } else {
            let bind: SocketAddr = match server {
                SocketAddr::V4(_) => (IpAddr::from([0u8; 4]), 0).into(),
                SocketAddr::V6(_) => (IpAddr::from([0u16; 8]), 0).into(),
            };
            let sock = UdpSocket::bind(bind).await.context("binding UDP")?;
            sock.connect(server)
                .await
                .with_context(|| format!("connecting UDP to {server}"))?;
            Ok(Conn::Udp {
                sock,
                buf: vec![0u8; 4096],
            })
        }
    }

    /// One query: Ok when answered with records.
    async fn ask(
        &mut self,
        name: &Name,
        rtype: RecordType,
        id: u16,
        timeout: Duration,
    ) -> Result<(), Failure> {
        match self {
            Conn::Tcp(c) => {
                match tokio::time::timeout(timeout, c.query(name.clone(), DNSClass::IN, rtype))
                    .await
                {
                    Err(_) => Err(Failure::Timeout),
                    Ok(Err(_)) => Err(Failure::Io),
                    Ok(Ok(r)) => judge(r.metadata.response_code, r.answers.len()),
                }
            }
            Conn::Udp { sock, buf } => {
                let mut q = Message::query();
                q.metadata.id = id;
                q.metadata.recursion_desired = true;
                q.add_query(Query::query(name.clone(), rtype));
                let bytes = q.to_vec().map_err(|_| Failure::Io)?;
                sock.send(&bytes).await.map_err(|_| Failure::Io)?;
                let deadline = tokio::time::Instant::now() + timeout;
                loop {
                    let n = match tokio::time::timeout_at(deadline, sock.recv(buf)).await {
                        Err(_) => return Err(Failure::Timeout),
                        Ok(Err(_)) => return Err(Failure::Io),
                        Ok(Ok(n)) => n,
                    };
                    // A late answer to an earlier (timed-out) query: not ours.
                    let Ok(m) = Message::from_vec(&buf[..n]) else {
                        continue;
                    };
                    if m.metadata.id != id {
                        continue;
                    }
                    return judge(m.metadata.response_code, m.answers.len());
                }
            }
        }
    }
}

/// One bounded load run.
struct Load {
    server: SocketAddr,
    tcp: bool,
    rtype: RecordType,
    /// At most this many queries ...
    count: u64,
    /// ... and for at most this long.
    duration: Duration,
    concurrency: usize,
    timeout: Duration,
}

impl Load {
    /// Runs the workers to the end; the summary counts every failure as an error.
    async fn run(
        &self,
        names: Arc<Vec<Name>>,
        token: CancellationToken,
    ) -> anyhow::Result<(stats::Summary, BTreeMap<Failure, u64>)> {
        let issued = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let deadline = started + self.duration;
        let mut workers = tokio::task::JoinSet::new();
        for w in 0..self.concurrency.max(1) {
            let mut conn = Conn::open(self.server, self.tcp, self.timeout).await?;
            let (names, issued, token) = (names.clone(), issued.clone(), token.clone());
            let (count, timeout, rtype) = (self.count, self.timeout, self.rtype);
            workers.spawn(async move {
                let mut rng = StdRng::from_entropy();
                let mut hist = stats::histogram();
                let mut failures: BTreeMap<Failure, u64> = BTreeMap::new();
                // Distinct ids per worker; a worker has one query in flight.
                let mut id = (w as u16).wrapping_mul(7919);
                while !token.is_cancelled()
                    && Instant::now() < deadline
                    && issued.fetch_add(1, Ordering::Relaxed) < count
                {
                    let name = &names[rng.gen_range(0..names.len())];
                    id = id.wrapping_add(1);
                    let t0 = Instant::now();
                    match conn.ask(name, rtype, id, timeout).await {
                        Ok(()) => stats::record(&mut hist, t0.elapsed()),
                        Err(f) => *failures.entry(f).or_default() += 1,
                    }
                }
                (hist, failures)
            });
        }
        let mut hist = stats::histogram();
        let mut failures: BTreeMap<Failure, u64> = BTreeMap::new();
        while let Some(t) = workers.join_next().await {
            let (h, f) = t.context("dnsperf worker")?;
            hist.add(&h).context("merging histograms")?;
            for (k, n) in f {
                *failures.entry(k).or_default() += n;
            }
        }
        let errors = failures.values().sum();
        Ok((
            stats::Summary::new(&hist, errors, started.elapsed()),
            failures,
        ))
    }
}

pub async fn run(args: Args, token: CancellationToken) -> anyhow::Result<()> {
    let server = match args.server {
        Some(ip) => ip,
        None => {
            let text = std::fs::read_to_string("/etc/resolv.conf")
                .context("reading /etc/resolv.conf (or give --server)")?;
            *ResolvConf::parse(&text)
                .nameservers
                .first()
                .context("no nameserver in /etc/resolv.conf: give --server")?
        }
    };
    let server = SocketAddr::new(server, args.port);
    let rtype = RecordType::from_str(&args.record_type.to_ascii_uppercase())
        .with_context(|| format!("record type {:?}", args.record_type))?;
    let names = Arc::new(names(&args)?);
    if !(args.duration.is_finite() && args.duration > 0.0) {
        bail!("--duration must be a positive number of seconds");
    }
    let concurrency = args.concurrency.max(1);
    let load = Load {
        server,
        tcp: args.tcp,
        rtype,
        count: args.count,
        duration: Duration::from_secs_f64(args.duration),
        concurrency,
        timeout: args.timeout,
    };
    let (s, failures) = load.run(names.clone(), token).await?;
    let errors = s.errors;
    let queries = s.ok + errors;
    let qps = if s.seconds > 0.0 {
        queries as f64 / s.seconds
    } else {
        0.0
    };
    if args.json {
        let mut v = serde_json::json!({
            "server": server.to_string(),
            "transport": if args.tcp { "tcp" } else { "udp" },
            "names": names.len(),
            "concurrency": concurrency,
            "queries": queries,
            "qps": qps,
            "summary": s,
        });
        v["failures"] = failures
            .iter()
            .map(|(f, n)| (f.to_string(), serde_json::json!(n)))
            .collect::<serde_json::Map<_, _>>()
            .into();
        println!("{v}");
    } else {
        println!("server: {server}");
        println!("transport: {}", if args.tcp { "tcp" } else { "udp" });
        println!("names: {}", names.len());
        println!("concurrency: {concurrency}");
        println!("queries: {queries}");
        println!("answered: {}", s.ok);
        println!("errors: {errors}");
        for (f, n) in &failures {
            println!("errors_{f}: {n}");
        }
        println!("seconds: {:.3}", s.seconds);
        println!("qps: {qps:.0}");
        println!("answered_qps: {:.0}", s.rate);
        println!("p50_us: {}", s.p50_us);
        println!("p90_us: {}", s.p90_us);
        println!("p99_us: {}", s.p99_us);
        println!("p999_us: {}", s.p999_us);
        println!("max_us: {}", s.max_us);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(argv: &[&str]) -> Args {
        Cli::try_parse_from(std::iter::once("dnsperf").chain(argv.iter().copied()))
            .unwrap_or_else(|e| panic!("{argv:?}: {e}"))
            .args
    }

    #[test]
    fn prefix_names_are_service_fqdns() {
        let a = parse(&[
            "--prefix",
            "svc-",
            "--services",
            "3",
            "--namespace",
            "bench",
        ]);
        let n: Vec<String> = names(&a)
            .expect("names")
            .iter()
            .map(Name::to_string)
            .collect();
        assert_eq!(
            n,
            [
                "svc-0.bench.svc.cluster.local.",
                "svc-1.bench.svc.cluster.local.",
                "svc-2.bench.svc.cluster.local."
            ]
        );
    }

    #[test]
    fn names_come_from_a_file_or_nowhere() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("names");
        std::fs::write(
            &f,
            "# names\na.default.svc.cluster.local\n\nb.example. # abs\n",
        )
        .expect("write");
        let a = parse(&["--names", f.to_str().expect("utf-8 path")]);
        let n: Vec<String> = names(&a)
            .expect("names")
            .iter()
            .map(Name::to_string)
            .collect();
        assert_eq!(n, ["a.default.svc.cluster.local.", "b.example."]);
        assert!(names(&parse(&[])).is_err(), "no names given");
        assert!(
            Cli::try_parse_from(["dnsperf", "--prefix", "x"]).is_err(),
            "--services required"
        );
    }

    #[test]
    fn only_noerror_with_records_counts_as_answered() {
        assert_eq!(judge(ResponseCode::NoError, 1), Ok(()));
        assert_eq!(judge(ResponseCode::NoError, 0), Err(Failure::NoRecords));
        assert_eq!(
            judge(ResponseCode::NXDomain, 0),
            Err(Failure::Rcode(ResponseCode::NXDomain.into()))
        );
        assert_eq!(
            Failure::Rcode(ResponseCode::NXDomain.into()).to_string(),
            "rcode_nxdomain"
        );
    }

    /// A UDP server on loopback answering `known.` with an A record and everything else
    /// with NXDOMAIN (hickory-proto messages), until `stop`.
    async fn fake_server(stop: CancellationToken) -> SocketAddr {
        let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = sock.local_addr().expect("addr");
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let (n, peer) = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = sock.recv_from(&mut buf) => r.expect("recv"),
                };
                let q = Message::from_vec(&buf[..n]).expect("a query");
                let mut r = Message::response(q.metadata.id, q.metadata.op_code);
                let question = q.queries[0].clone();
                if question.name().to_string() == "known." {
                    r.add_answer(hickory_server::proto::rr::Record::from_rdata(
                        question.name().clone(),
                        5,
                        hickory_server::proto::rr::RData::A(
                            std::net::Ipv4Addr::new(10, 0, 0, 1).into(),
                        ),
                    ));
                } else {
                    r.metadata.response_code = ResponseCode::NXDomain;
                }
                r.add_query(question);
                sock.send_to(&r.to_vec().expect("encode"), peer)
                    .await
                    .expect("send");
            }
        });
        addr
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stops_at_the_count_and_tells_answers_from_errors() {
        let stop = CancellationToken::new();
        let server = fake_server(stop.clone()).await;
        let names: Vec<Name> = ["known.", "unknown."]
            .iter()
            .map(|n| Name::from_str(n).expect("name"))
            .collect();
        let load = Load {
            server,
            tcp: false,
            rtype: RecordType::A,
            count: 400,
            duration: Duration::from_secs(30),
            concurrency: 4,
            timeout: Duration::from_secs(2),
        };
        let (s, failures) = load
            .run(Arc::new(names), CancellationToken::new())
            .await
            .expect("load runs");
        assert_eq!(s.ok + s.errors, 400, "bounded by --count: {s:?}");
        let nx = failures
            .get(&Failure::Rcode(ResponseCode::NXDomain.into()))
            .copied()
            .unwrap_or(0);
        assert_eq!(nx, s.errors, "only the unknown name fails: {failures:?}");
        // Random picks of two names: both kinds show up in 400 queries.
        assert!(s.ok > 0 && nx > 0, "{s:?} {failures:?}");
        assert!(s.p50_us > 0 && s.p99_us >= s.p50_us, "{s:?}");

        // Bounded by time: a server that never answers.
        let silent = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let load = Load {
            server: silent.local_addr().expect("addr"),
            count: 1_000_000,
            duration: Duration::from_millis(300),
            timeout: Duration::from_millis(100),
            concurrency: 2,
            ..load
        };
        let names = Arc::new(vec![Name::from_str("known.").expect("name")]);
        let (s, failures) = load
            .run(names, CancellationToken::new())
            .await
            .expect("runs");
        assert_eq!(s.ok, 0);
        assert_eq!(failures.get(&Failure::Timeout).copied(), Some(s.errors));
        assert!(
            s.errors <= 2 * 4,
            "at most 300/100 + 1 queries per worker: {s:?}"
        );
        stop.cancel();
    }
}
