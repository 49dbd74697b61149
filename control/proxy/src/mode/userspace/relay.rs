//! Moving bytes between the client's connection and the backend's, as the userspace proxy's
//! two-connection design needs.
//!
//! TCP: each direction is spliced through a pipe (`splice(2)`: socket -> pipe -> socket, no
//! copy through userspace); where splice is refused (`EINVAL`/`ENOSYS`: a socket type or
//! kernel without it), tokio's `copy_bidirectional` takes over. A direction that reads
//! end-of-stream shuts the other socket's write side down (half-close) and the other
//! direction keeps going; a connection reset by one peer resets the other (`SO_LINGER` 0,
//! then close).

use std::{
    io,
    os::fd::{AsFd, OwnedFd},
    sync::atomic::{AtomicU64, Ordering},
};

use nix::{
    errno::Errno,
    fcntl::{OFlag, SpliceFFlags, splice},
    sys::socket::{Shutdown, setsockopt, shutdown, sockopt},
};
use tokio::{io::Interest, net::TcpStream};

/// Bytes moved: (client -> backend, backend -> client).
pub type Moved = (u64, u64);

/// How a relay ended.
#[derive(Debug)]
pub enum Ended {
    /// Both directions reached end-of-stream.
    Closed(Moved),
    /// A peer reset its connection (the other one was reset too) or another error ended it.
    Failed(Moved, io::Error),
}

/// Pipe capacity asked for each direction (the kernel's default is 64 KiB already; a larger
/// pipe moves more per splice call).
const CHUNK: usize = 1 << 16;

/// Relays that spliced, and relays that fell back to copying (process-wide, for metrics).
pub static SPLICED: AtomicU64 = AtomicU64::new(0);
pub static COPIED: AtomicU64 = AtomicU64::new(0);

/// Relays until both directions are done.
pub async fn relay(mut client: TcpStream, mut backend: TcpStream) -> Ended {
    let spliced = splice_both(&client, &backend).await;
    let counter = if spliced.is_ok() { &SPLICED } else { &COPIED };
    counter.fetch_add(1, Ordering::Relaxed);
    match spliced {
        Err(Fallback) => match tokio::io::copy_bidirectional(&mut client, &mut backend).await {
            Ok(m) => Ended::Closed(m),
            Err(e) => {
                reset(&client);
                reset(&backend);
                Ended::Failed((0, 0), e)
            }
        },
        Ok(ended) => ended,
    }
}

/// Splice is not possible here: use the copying relay. The kernel refuses splice on the
/// first call of both directions alike (socket types without it), before any byte moved.
struct Fallback;

async fn splice_both(client: &TcpStream, backend: &TcpStream) -> Result<Ended, Fallback> {
    let up = one_way(client, backend);
    let down = one_way(backend, client);
    tokio::pin!(up, down);
    let (mut up_done, mut down_done) = (None, None);
    // A direction that reaches end-of-stream lets the other go on (half-close); one that
    // fails ends both (the connections were reset).
    while up_done.is_none() || down_done.is_none() {
        tokio::select! {
            r = &mut up, if up_done.is_none() => match r {
                Ok(n) => up_done = Some(n),
                Err(Way::Unsupported) => return Err(Fallback),
                Err(Way::Failed(n, e)) => {
                    return Ok(Ended::Failed((n, down_done.unwrap_or(0)), e));
                }
            },
            r = &mut down, if down_done.is_none() => match r {
                Ok(n) => down_done = Some(n),
                Err(Way::Unsupported) => return Err(Fallback),
                Err(Way::Failed(n, e)) => {
                    return Ok(Ended::Failed((up_done.unwrap_or(0), n), e));
                }
            },
        }
    }
    Ok(Ended::Closed((
        up_done.unwrap_or(0),
        down_done.unwrap_or(0),
    )))
}

enum Way {
    /// Splice refused before any byte moved.
    Unsupported,
    Failed(u64, io::Error),
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
    // A failed resize keeps the default size; not an error.
    let _ = nix::fcntl::fcntl(
        std::os::fd::AsRawFd::as_raw_fd(&w),
        nix::fcntl::FcntlArg::F_SETPIPE_SZ(CHUNK as i32),
    );
    Ok((r, w))
}

/// One direction, `from` -> `to`, through a pipe; returns the bytes moved.
async fn one_way(from: &TcpStream, to: &TcpStream) -> Result<u64, Way> {
    let (pr, pw) = pipe().map_err(|e| Way::Failed(0, e))?;
    let flags = SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE;
    let mut moved = 0u64;
    loop {
        // Socket -> pipe.
        let n = loop {
            if let Err(e) = from.readable().await {
                return Err(fail(moved, e, from, to));
            }
            match from.try_io(Interest::READABLE, || {
                splice(from.as_fd(), None, pw.as_fd(), None, CHUNK, flags).map_err(io::Error::from)
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) if moved == 0 && unsupported(&e) => return Err(Way::Unsupported),
                Err(e) => return Err(fail(moved, e, from, to)),
            }
        };
        if n == 0 {
            // End of stream: half-close towards the other peer.
            let _ = shutdown(to_raw(to), Shutdown::Write);
            return Ok(moved);
        }
        // Pipe -> socket, until the pipe is empty.
        let mut left = n;
        while left > 0 {
            if let Err(e) = to.writable().await {
                return Err(fail(moved, e, from, to));
            }
            match to.try_io(Interest::WRITABLE, || {
                splice(pr.as_fd(), None, to.as_fd(), None, left, flags).map_err(io::Error::from)
            }) {
                Ok(w) => {
                    left -= w;
                    moved += w as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(fail(moved, e, from, to)),
            }
        }
    }
}

fn to_raw(s: &TcpStream) -> std::os::fd::RawFd {
    use std::os::fd::AsRawFd as _;
    s.as_raw_fd()
}

fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error().map(Errno::from_raw),
        Some(Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP)
    )
}

/// A direction failed: both connections are reset so each peer learns it.
fn fail(moved: u64, e: io::Error, a: &TcpStream, b: &TcpStream) -> Way {
    reset(a);
    reset(b);
    Way::Failed(moved, e)
}

/// Makes the next close send a RST, and shuts the connection down now (so a peer blocked in
/// a read sees the reset while the task is still unwinding).
pub fn reset(s: &TcpStream) {
    let _ = setsockopt(
        s,
        sockopt::Linger,
        &nix::libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    );
}

#[cfg(test)]
mod tests {
    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::TcpListener,
    };

    use super::*;

    /// A backend listener, the proxy's address, and the task relaying its first connection.
    async fn proxied() -> (
        TcpListener,
        std::net::SocketAddr,
        tokio::task::JoinHandle<Ended>,
    ) {
        let backend_l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let proxy_l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let (baddr, paddr) = (
            backend_l.local_addr().expect("addr"),
            proxy_l.local_addr().expect("addr"),
        );
        let proxy = tokio::spawn(async move {
            let (c, _) = proxy_l.accept().await.expect("accept");
            let b = TcpStream::connect(baddr).await.expect("dial backend");
            relay(c, b).await
        });
        (backend_l, paddr, proxy)
    }

    /// A relay between a client and an echo-less server on loopback: both directions,
    /// half-close and a large transfer.
    #[tokio::test]
    async fn splice_relays_both_ways_with_half_close() {
        let (backend_l, paddr, proxy) = proxied().await;
        let server = tokio::spawn(async move {
            let (mut s, _) = backend_l.accept().await.expect("accept");
            let mut got = Vec::new();
            s.read_to_end(&mut got)
                .await
                .expect("read to the client's half-close");
            // The client's write side is closed; this direction still works.
            s.write_all(&got[..1024]).await.expect("answer");
            s.write_all(b"bye").await.expect("answer");
            got.len()
        });
        let mut c = TcpStream::connect(paddr).await.expect("dial proxy");
        let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        c.write_all(&payload).await.expect("send");
        c.shutdown().await.expect("half-close");
        let mut back = Vec::new();
        c.read_to_end(&mut back).await.expect("read answer");
        assert_eq!(server.await.expect("server"), payload.len());
        assert_eq!(&back[..1024], &payload[..1024]);
        assert_eq!(&back[1024..], b"bye");
        let ended = proxy.await.expect("proxy");
        let spliced = SPLICED.load(Ordering::Relaxed);
        match ended {
            Ended::Closed((up, down)) => {
                assert_eq!(up, payload.len() as u64);
                assert_eq!(down, 1027);
            }
            other => panic!("{other:?}"),
        }
        assert!(spliced >= 1, "the relay spliced (no copy fallback)");
    }

    /// A backend that resets its connection resets the client's too.
    #[tokio::test]
    async fn a_reset_is_propagated() {
        let (backend_l, paddr, proxy) = proxied().await;
        let server = tokio::spawn(async move {
            let (mut s, _) = backend_l.accept().await.expect("accept");
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).await.expect("read");
            reset(&s);
            drop(s);
        });
        let mut c = TcpStream::connect(paddr).await.expect("dial proxy");
        c.write_all(b"hello").await.expect("send");
        server.await.expect("server");
        let mut buf = [0u8; 16];
        let r = c.read(&mut buf).await;
        assert!(
            matches!(&r, Err(e) if e.kind() == io::ErrorKind::ConnectionReset),
            "the client sees the reset: {r:?}"
        );
        assert!(matches!(proxy.await.expect("proxy"), Ended::Failed(..)));
    }
}
