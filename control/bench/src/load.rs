//! The load generator: netperf-like workloads over plain sockets, one OS thread per client,
//! each thread inside the network namespace (and, for host-process paths, the process inside
//! the node's cgroup: the caller arranges that). Every run is bounded by a duration and a
//! count of operations.
//!
//! - `rr` (TCP_RR-like): keep-alive HTTP/1.1 `GET /hostname` on one connection per client;
//! - `crr` (TCP_CRR-like): connect, one request, response, close;
//! - `udp` (UDP_RR-like): one datagram, one answer, per operation (agnhost's UDP server).

use std::{
    fs::File,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddrV4, TcpStream, UdpSocket},
    path::Path,
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::stats::{Summary, histogram, record};

/// A workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Workload {
    /// Keep-alive request/response, one client.
    Rr1,
    /// Keep-alive request/response, [`Load::clients`] clients.
    RrN,
    /// New connection per request, [`Load::clients`] clients.
    Crr,
    /// UDP request/response, one client.
    Udp,
}

impl Workload {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Rr1 => "rr_1",
            Self::RrN => "rr_n",
            Self::Crr => "crr",
            Self::Udp => "udp",
        }
    }
}

/// Bounds of one run.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    pub clients: usize,
    pub duration: Duration,
    /// At most this many operations per client.
    pub max_ops: u64,
    /// Per-operation timeout.
    pub timeout: Duration,
}

const REQUEST: &[u8] = b"GET /hostname HTTP/1.1\r\nHost: bench\r\n\r\n";

/// Reads one HTTP/1.1 response with a `Content-Length` body and returns the body.
fn read_response(r: &mut BufReader<TcpStream>) -> std::io::Result<Vec<u8>> {
    let mut len = None;
    let mut status_ok = false;
    let mut first = true;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let l = line.trim_end();
        if first {
            status_ok = l.starts_with("HTTP/1.1 200") || l.starts_with("HTTP/1.0 200");
            first = false;
            continue;
        }
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse::<usize>().ok();
        }
    }
    let body = match len {
        Some(len) => {
            let mut body = vec![0u8; len];
            r.read_exact(&mut body)?;
            body
        }
        // Without a length the body ends with the connection (`Connection: close`).
        None => {
            let mut body = Vec::new();
            r.read_to_end(&mut body)?;
            body
        }
    };
    if status_ok {
        Ok(body)
    } else {
        Err(std::io::ErrorKind::InvalidData.into())
    }
}

fn connect(to: SocketAddrV4, timeout: Duration) -> std::io::Result<BufReader<TcpStream>> {
    let s = TcpStream::connect_timeout(&to.into(), timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.set_nodelay(true)?;
    Ok(BufReader::new(s))
}

/// One client's loop until `until` or `max_ops`.
fn client(
    workload: Workload,
    to: SocketAddrV4,
    until: Instant,
    load: Load,
) -> (Histogram<u64>, u64) {
    let mut h = histogram();
    let mut errors = 0u64;
    let mut conn: Option<BufReader<TcpStream>> = None;
    let udp = match workload {
        Workload::Udp => UdpSocket::bind(("0.0.0.0", 0))
            .and_then(|s| {
                s.set_read_timeout(Some(load.timeout))?;
                s.connect(to)?;
                Ok(s)
            })
            .ok(),
        _ => None,
    };
    let mut buf = [0u8; 512];
    let mut ops = 0u64;
    while ops < load.max_ops && Instant::now() < until {
        ops += 1;
        let t = Instant::now();
        let res: std::io::Result<()> = match workload {
            Workload::Udp => match &udp {
                Some(s) => s
                    .send(b"hostname")
                    .and_then(|_| s.recv(&mut buf))
                    .map(|_| ()),
                None => Err(std::io::ErrorKind::NotConnected.into()),
            },
            Workload::Crr => connect(to, load.timeout).and_then(|mut c| {
                c.get_mut().write_all(REQUEST)?;
                read_response(&mut c).map(drop)
            }),
            Workload::Rr1 | Workload::RrN => {
                let c = match conn.take() {
                    Some(c) => Ok(c),
                    None => connect(to, load.timeout),
                };
                c.and_then(|mut c| {
                    c.get_mut().write_all(REQUEST)?;
                    read_response(&mut c)?;
                    conn = Some(c);
                    Ok(())
                })
            }
        };
        match res {
            Ok(()) => record(&mut h, t.elapsed()),
            Err(_) => {
                errors += 1;
                // Back off a little so a dead path does not spin.
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    (h, errors)
}

/// Whether `GET path` on `to`, from the network namespace at `netns`, answers 200.
pub fn get_ok(netns: &Path, to: SocketAddrV4, path: &str, timeout: Duration) -> bool {
    get(netns, to, path, timeout).is_ok()
}

/// The body of a 200 answer to `GET path` on `to` (a new connection), from the network
/// namespace at `netns`.
pub fn get(
    netns: &Path,
    to: SocketAddrV4,
    path: &str,
    timeout: Duration,
) -> std::io::Result<String> {
    let ns = File::open(netns)?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| -> std::io::Result<String> {
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)?;
                let mut c = connect(to, timeout)?;
                c.get_mut().write_all(
                    format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                )?;
                let body = read_response(&mut c)?;
                Ok(String::from_utf8_lossy(&body).into_owned())
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("client panicked")))
    })
}

/// Runs `workload` against `to` from the network namespace at `netns` (a file such as
/// `/run/netns/<name>`).
pub fn run(
    netns: &Path,
    workload: Workload,
    to: SocketAddrV4,
    load: Load,
) -> std::io::Result<Summary> {
    let raw = run_raw(netns, workload, to, load)?;
    Ok(Summary::new(&raw.hist, raw.errors, raw.wall))
}

/// What a run measured before summarizing: runs of one cell are merged.
#[derive(Clone, Debug)]
pub struct Raw {
    pub hist: Histogram<u64>,
    pub errors: u64,
    pub wall: Duration,
}

impl Raw {
    /// Adds `other` (another run of the same cell).
    pub fn merge(&mut self, other: &Raw) -> std::io::Result<()> {
        self.hist
            .add(&other.hist)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        self.errors += other.errors;
        self.wall += other.wall;
        Ok(())
    }

    pub fn summary(&self) -> Summary {
        Summary::new(&self.hist, self.errors, self.wall)
    }
}

/// [`run`] without the summary.
pub fn run_raw(
    netns: &Path,
    workload: Workload,
    to: SocketAddrV4,
    load: Load,
) -> std::io::Result<Raw> {
    let clients = match workload {
        Workload::Rr1 | Workload::Udp => 1,
        Workload::RrN | Workload::Crr => load.clients.max(1),
    };
    let ns = File::open(netns)?;
    let started = Instant::now();
    let until = started + load.duration;
    let results = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..clients)
            .map(|_| {
                let ns = &ns;
                scope.spawn(move || -> std::io::Result<(Histogram<u64>, u64)> {
                    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(std::io::Error::from)?;
                    Ok(client(workload, to, until, load))
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("client panicked")))
            })
            .collect::<Vec<_>>()
    });
    let wall = started.elapsed();
    let mut all = histogram();
    let mut errors = 0;
    for r in results {
        let (h, e) = r?;
        all.add(&h)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        errors += e;
    }
    Ok(Raw {
        hist: all,
        errors,
        wall,
    })
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, TcpListener};

    use super::*;

    /// A tiny keep-alive HTTP server on loopback answering `/hostname`.
    fn server() -> SocketAddrV4 {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = match l.local_addr().expect("addr") {
            std::net::SocketAddr::V4(a) => a,
            std::net::SocketAddr::V6(_) => panic!("v4 expected"),
        };
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut r = BufReader::new(s.try_clone().expect("clone"));
                    let mut w = s;
                    loop {
                        let mut line = String::new();
                        match r.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) if line == "\r\n" => {
                                let _ = w
                                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nhost");
                            }
                            Ok(_) => {}
                        }
                    }
                });
            }
        });
        addr
    }

    #[test]
    fn rr_and_crr_count_every_request_and_stop_at_the_bounds() {
        let to = server();
        let here = Path::new("/proc/self/ns/net");
        let load = Load {
            clients: 3,
            duration: Duration::from_secs(5),
            max_ops: 200,
            timeout: Duration::from_secs(2),
        };
        let rr = run(here, Workload::RrN, to, load).expect("rr");
        assert_eq!((rr.ok, rr.errors), (600, 0), "{rr:?}");
        assert!(rr.p50_us > 0 && rr.p50_us <= rr.p99_us && rr.p99_us <= rr.max_us);
        let crr = run(here, Workload::Crr, to, load).expect("crr");
        assert_eq!((crr.ok, crr.errors), (600, 0), "{crr:?}");
        // Nobody listens: every operation fails, and the run still ends.
        let dead = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1);
        let load = Load { max_ops: 5, ..load };
        let none = run(here, Workload::Rr1, dead, load).expect("dead");
        assert_eq!((none.ok, none.errors), (0, 5));
        // Runs of one cell merge: counts add up, percentiles come from both.
        let load = Load {
            clients: 1,
            max_ops: 50,
            ..load
        };
        let mut a = run_raw(here, Workload::Rr1, to, load).expect("a");
        let b = run_raw(here, Workload::Rr1, to, load).expect("b");
        a.merge(&b).expect("merge");
        let s = a.summary();
        assert_eq!((s.ok, s.errors), (100, 0));
        assert!(s.p50_us <= s.max_us && s.max_us == a.hist.max());
    }
}
