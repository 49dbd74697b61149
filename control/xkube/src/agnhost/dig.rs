//! `xkube agnhost dig`: one DNS lookup from inside a pod, resolved as the pod's resolver
//! would, with hickory's client.
//!
//! The server is `--server` or the first `nameserver` of `/etc/resolv.conf` (the kubelet
//! writes `nameserver 10.96.0.10`, `search <ns>.svc.cluster.local svc.cluster.local
//! cluster.local` and `options ndots:5` for ClusterFirst pods). The name is expanded like
//! glibc's `res_search`: a name ending in `.` is asked as it is; a name with at least `ndots`
//! dots is asked as it is first, then with each search domain; a name with fewer dots is
//! asked with each search domain first, then as it is. The next candidate is tried when an
//! answer is NXDOMAIN or has no record of the type (NODATA); the first answer with records
//! is printed, else the last candidate's answer (so an unknown short name reports what the
//! server said about the bare name, e.g. REFUSED from a cluster DNS without upstreams: ask
//! the full name, `nosuch.default.svc.cluster.local.`, to see NXDOMAIN). `--search` replaces
//! the search domains, `--no-search` asks the name as it is only.
//!
//! Output, one item per line (stable, for scripts and tests):
//!
//! ```text
//! ;; server 10.96.0.10:53 udp
//! ;; tried my-svc.svc.cluster.local. NXDOMAIN      (candidates that did not answer)
//! ;; when: 1767225600.123456                       (when the answer printed arrived)
//! name: my-svc.default.svc.cluster.local.
//! status: NOERROR
//! my-svc.default.svc.cluster.local. 5 IN A 10.96.3.7
//! ```
//!
//! Records are in the presentation format (`name ttl class type rdata`), answer section only.
//! `--short` prints the rdata of each answer alone. The exit status is 0 whenever a server
//! answered (whatever the rcode), 1 when none did (timeouts, refused connections).

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    str::FromStr as _,
    time::Duration,
};

use anyhow::{Context as _, bail};
use hickory_server::{
    net::{
        client::{Client, ClientHandle as _},
        runtime::TokioRuntimeProvider,
        tcp::TcpClientStream,
        udp::UdpClientStream,
    },
    proto::{
        op::{DnsResponse, ResponseCode},
        rr::{DNSClass, Name, RecordType},
    },
};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The name to look up.
    name: String,
    /// DNS server address (default: the first `nameserver` of `--resolv-conf`).
    #[arg(long)]
    server: Option<IpAddr>,
    /// DNS server port.
    #[arg(long, default_value_t = 53)]
    port: u16,
    /// Ask over TCP (default UDP; a truncated UDP answer is asked again over TCP).
    #[arg(long)]
    tcp: bool,
    /// Record type: A, AAAA, SRV, PTR, CNAME, TXT, NS, SOA, ... (an IP address with PTR is
    /// turned into its reverse name).
    #[arg(long = "type", short = 't', default_value = "A")]
    record_type: String,
    /// Search domains (repeatable; replaces resolv.conf's `search`).
    #[arg(long)]
    search: Vec<String>,
    /// Ask the name exactly as given (no search domains).
    #[arg(long, conflicts_with = "search")]
    no_search: bool,
    /// Dots below which the search domains are tried first (default: resolv.conf's
    /// `options ndots:N`, else 1 as glibc).
    #[arg(long)]
    ndots: Option<u8>,
    /// The resolver configuration read for the defaults.
    #[arg(long, default_value = "/etc/resolv.conf")]
    resolv_conf: PathBuf,
    /// Time to wait for one answer.
    #[arg(long, default_value = "2s", value_parser = xkube_api::duration::parse)]
    timeout: Duration,
    /// Attempts per candidate name (UDP datagrams get lost).
    #[arg(long, default_value_t = 2)]
    tries: u32,
    /// Print the answers' rdata only, one per line.
    #[arg(long)]
    short: bool,
}

/// What `resolv.conf` says (only what `dig` uses).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ResolvConf {
    pub nameservers: Vec<IpAddr>,
    pub search: Vec<String>,
    pub ndots: Option<u8>,
}

impl ResolvConf {
    /// Parses resolv.conf(5): `nameserver`, `search` (the last one wins, `domain` too) and
    /// `options ndots:N` (capped at 15 as glibc does); comments start with `#` or `;`.
    pub fn parse(text: &str) -> Self {
        let mut rc = ResolvConf::default();
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or_default();
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => {
                    if let Some(ip) = words.next().and_then(|w| w.parse().ok()) {
                        rc.nameservers.push(ip);
                    }
                }
                Some("search" | "domain") => rc.search = words.map(str::to_owned).collect(),
                Some("options") => {
                    for o in words {
                        if let Some(n) = o.strip_prefix("ndots:").and_then(|n| n.parse().ok()) {
                            rc.ndots = Some(std::cmp::min(n, 15u8));
                        }
                    }
                }
                _ => {}
            }
        }
        rc
    }
}

/// The names a resolver asks for `name`, in order (glibc's `res_search`; see the module
/// docs). `name` is already validated as a domain name.
pub fn candidates(name: &str, search: &[String], ndots: u8) -> Vec<String> {
    if name.ends_with('.') {
        return vec![name.to_owned()];
    }
    let as_is = format!("{name}.");
    let searched = search
        .iter()
        .map(|d| d.trim_end_matches('.'))
        .filter(|d| !d.is_empty())
        .map(|d| format!("{name}.{d}."));
    let dots = name.matches('.').count();
    if dots >= usize::from(ndots) {
        std::iter::once(as_is.clone())
            .chain(searched.filter(|c| *c != as_is))
            .collect()
    } else {
        searched.chain(std::iter::once(as_is)).collect()
    }
}

/// The rcode's mnemonic as dig prints it (RFC 1035, 2136, 6891): `NOERROR`, `NXDOMAIN`, ...
pub fn rcode_name(rcode: ResponseCode) -> String {
    match u16::from(rcode) {
        0 => "NOERROR".into(),
        1 => "FORMERR".into(),
        2 => "SERVFAIL".into(),
        3 => "NXDOMAIN".into(),
        4 => "NOTIMP".into(),
        5 => "REFUSED".into(),
        6 => "YXDOMAIN".into(),
        7 => "YXRRSET".into(),
        8 => "NXRRSET".into(),
        9 => "NOTAUTH".into(),
        10 => "NOTZONE".into(),
        16 => "BADVERS".into(),
        n => format!("RCODE{n}"),
    }
}

/// `1.2.3.4` -> `4.3.2.1.in-addr.arpa.` (and the nibble form for IPv6) when a PTR lookup is
/// given an address.
fn reverse_name(name: &str) -> Option<String> {
    let ip: IpAddr = name.parse().ok()?;
    Some(match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa.", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut s = String::new();
            for b in v6.octets().iter().rev() {
                s.push_str(&format!("{:x}.{:x}.", b & 0xf, b >> 4));
            }
            s.push_str("ip6.arpa.");
            s
        }
    })
}

/// One query to `server` (UDP or TCP), retried `tries` times on transport errors.
pub async fn query(
    server: SocketAddr,
    tcp: bool,
    name: &Name,
    rtype: RecordType,
    timeout: Duration,
    tries: u32,
) -> anyhow::Result<DnsResponse> {
    let mut last = None;
    for _ in 0..tries.max(1) {
        match query_once(server, tcp, name, rtype, timeout).await {
            Ok(r) => return Ok(r),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt made")))
}

async fn query_once(
    server: SocketAddr,
    tcp: bool,
    name: &Name,
    rtype: RecordType,
    timeout: Duration,
) -> anyhow::Result<DnsResponse> {
    let provider = TokioRuntimeProvider::default();
    let (mut client, bg) = if tcp {
        let (connect, handle) = TcpClientStream::new(server, None, Some(timeout), provider);
        let stream = tokio::time::timeout(timeout, connect)
            .await
            .with_context(|| format!("TCP connection to {server} timed out"))?
            .with_context(|| format!("TCP connection to {server}"))?;
        let (c, bg) = Client::<TokioRuntimeProvider>::with_timeout(stream, handle, timeout);
        (c, tokio::spawn(bg))
    } else {
        let stream = UdpClientStream::builder(server, provider)
            .with_timeout(Some(timeout))
            // One datagram per attempt: the attempts are ours (`--tries`).
            .with_max_retries(0)
            .build();
        let (c, bg) = Client::<TokioRuntimeProvider>::from_sender(stream);
        (c, tokio::spawn(bg))
    };
    let answer = tokio::time::timeout(timeout, client.query(name.clone(), DNSClass::IN, rtype))
        .await
        .with_context(|| format!("no answer from {server} within {timeout:?}"))?
        .with_context(|| format!("query {name} {rtype} to {server}"));
    drop(client);
    bg.abort();
    answer
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let conf = match std::fs::read_to_string(&args.resolv_conf) {
        Ok(text) => ResolvConf::parse(&text),
        // Without the file, --server and the explicit options must do.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => ResolvConf::default(),
        Err(e) => {
            return Err(e).with_context(|| format!("reading {}", args.resolv_conf.display()));
        }
    };
    let Some(ip) = args.server.or_else(|| conf.nameservers.first().copied()) else {
        bail!(
            "no DNS server: give --server, or a nameserver line in {}",
            args.resolv_conf.display()
        );
    };
    let server = SocketAddr::new(ip, args.port);
    let rtype = RecordType::from_str(&args.record_type.to_ascii_uppercase())
        .with_context(|| format!("record type {:?}", args.record_type))?;
    let (name, search) = match reverse_name(&args.name) {
        Some(rev) if rtype == RecordType::PTR => (rev, Vec::new()),
        _ if args.no_search => (args.name.clone(), Vec::new()),
        _ if !args.search.is_empty() => (args.name.clone(), args.search.clone()),
        _ => (args.name.clone(), conf.search.clone()),
    };
    // glibc's default ndots is 1.
    let ndots = args.ndots.or(conf.ndots).unwrap_or(1);
    let names = if args.no_search {
        vec![if name.ends_with('.') {
            name.clone()
        } else {
            format!("{name}.")
        }]
    } else {
        candidates(&name, &search, ndots)
    };
    println!(
        ";; server {server} {}",
        if args.tcp { "tcp" } else { "udp" }
    );
    let mut last: Option<(Name, DnsResponse)> = None;
    let mut failure = None;
    for candidate in &names {
        let n = Name::from_str(candidate).with_context(|| format!("name {candidate:?}"))?;
        let mut resp = match query(server, args.tcp, &n, rtype, args.timeout, args.tries).await {
            Ok(r) => r,
            Err(e) => {
                println!(";; tried {candidate} no answer: {e:#}");
                failure = Some(e);
                continue;
            }
        };
        if resp.metadata.truncation && !args.tcp {
            println!(";; {candidate}: truncated over UDP, asking again over TCP");
            resp = query(server, true, &n, rtype, args.timeout, args.tries).await?;
        }
        let rcode = resp.metadata.response_code;
        let found = rcode == ResponseCode::NoError && !resp.answers.is_empty();
        if found {
            last = Some((n, resp));
            break;
        }
        println!(
            ";; tried {candidate} {}",
            if rcode == ResponseCode::NoError {
                "NODATA".to_owned()
            } else {
                rcode_name(rcode)
            }
        );
        last = Some((n, resp));
    }
    let Some((name, resp)) = last else {
        return Err(failure.unwrap_or_else(|| anyhow::anyhow!("no name to ask")));
    };
    let when = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    println!(";; when: {}.{:06}", when.as_secs(), when.subsec_micros());
    println!("name: {name}");
    println!("status: {}", rcode_name(resp.metadata.response_code));
    for r in &resp.answers {
        if args.short {
            println!("{}", r.data);
        } else {
            println!("{r}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_owned()).collect()
    }

    const POD: &str = "# written by the kubelet\nnameserver 10.96.0.10\nnameserver 10.96.0.11 \
                       ; second\nsearch default.svc.cluster.local svc.cluster.local \
                       cluster.local\noptions ndots:5 timeout:2\n";

    #[test]
    fn reads_a_pods_resolv_conf() {
        let rc = ResolvConf::parse(POD);
        assert_eq!(
            rc,
            ResolvConf {
                nameservers: vec![
                    "10.96.0.10".parse().expect("ip"),
                    "10.96.0.11".parse().expect("ip")
                ],
                search: s(&[
                    "default.svc.cluster.local",
                    "svc.cluster.local",
                    "cluster.local"
                ]),
                ndots: Some(5),
            }
        );
        // The last search/domain line wins; ndots is capped at 15.
        let rc = ResolvConf::parse("search a b\ndomain c\noptions ndots:40\n");
        assert_eq!(rc.search, s(&["c"]));
        assert_eq!(rc.ndots, Some(15));
        assert_eq!(
            ResolvConf::parse("nameserver bogus\n").nameservers,
            Vec::<IpAddr>::new()
        );
    }

    #[test]
    fn short_names_go_through_the_search_path_first() {
        let search = ResolvConf::parse(POD).search;
        assert_eq!(
            candidates("my-svc", &search, 5),
            s(&[
                "my-svc.default.svc.cluster.local.",
                "my-svc.svc.cluster.local.",
                "my-svc.cluster.local.",
                "my-svc.",
            ])
        );
        assert_eq!(
            candidates("my-svc.other-ns", &search, 5)[0],
            "my-svc.other-ns.default.svc.cluster.local."
        );
        assert_eq!(
            candidates("my-svc.other-ns", &search, 5)[1],
            "my-svc.other-ns.svc.cluster.local."
        );
    }

    #[test]
    fn names_with_ndots_dots_are_asked_as_they_are_first_and_fqdns_only_as_they_are() {
        let search = s(&["default.svc.cluster.local", "cluster.local."]);
        assert_eq!(
            candidates("a.b.c", &search, 2),
            s(&[
                "a.b.c.",
                "a.b.c.default.svc.cluster.local.",
                "a.b.c.cluster.local."
            ])
        );
        assert_eq!(
            candidates("x.cluster.local.", &search, 5),
            s(&["x.cluster.local."])
        );
        assert_eq!(candidates("x", &[], 1), s(&["x."]));
    }

    #[test]
    fn rcodes_print_as_dig_does() {
        assert_eq!(rcode_name(ResponseCode::NoError), "NOERROR");
        assert_eq!(rcode_name(ResponseCode::NXDomain), "NXDOMAIN");
        assert_eq!(rcode_name(ResponseCode::Refused), "REFUSED");
        assert_eq!(rcode_name(ResponseCode::from(0, 12)), "RCODE12");
    }

    #[test]
    fn ptr_lookups_of_addresses_use_the_reverse_zones() {
        assert_eq!(
            reverse_name("10.96.0.10").as_deref(),
            Some("10.0.96.10.in-addr.arpa.")
        );
        assert_eq!(
            reverse_name("2001:db8::1").as_deref(),
            Some("1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa.")
        );
        assert_eq!(reverse_name("my-svc"), None);
    }
}
