//! SPDY/3.1 sessions: the stream multiplexing under `kubectl port-forward`.
//!
//! kubectl (client-go) speaks SPDY/3.1 with [moby/spdystream] either inside the binary messages
//! of a WebSocket (`SPDY/3.1+portforward.k8s.io`) or on a raw `Upgrade: SPDY/3.1` connection.
//! Either way this module gets a byte stream and runs a session on it: [`Session::server`] for
//! the kubelet side (peer streams have odd ids, [`Session::accept`] hands them out in order),
//! [`Session::client`] for the other side ([`Session::open`]). Each [`Stream`] is a tokio
//! `AsyncRead + AsyncWrite`.
//!
//! # Wire behaviour
//! - Frames per the SPDY/3 draft: SYN_STREAM, SYN_REPLY, RST_STREAM, PING, GOAWAY and HEADERS
//!   are handled; SETTINGS, WINDOW_UPDATE and unknown control frames are read and ignored.
//! - Name/value header blocks are zlib streams with the SPDY/3 dictionary (Adler-32
//!   `0xe3c6a7c2`), one context per direction for the whole session, sync-flushed after every
//!   block. Every received block is inflated, even for frames that are then ignored, or the
//!   context would desynchronise. Ours are written like Chromium's: level 9, a 2 KiB window
//!   (zlib header `38 ea`).
//! - A stream the peer opens must be answered with SYN_REPLY before data: spdystream drops data
//!   on a stream it has no reply for. [`Stream::reply`] sends it; the first write or shutdown
//!   sends it too if the caller did not.
//! - Half-close: [`AsyncWrite::poll_shutdown`] sends an empty DATA frame with FLAG_FIN; a FIN
//!   from the peer makes reads return EOF. A RST_STREAM makes reads fail with
//!   `ConnectionReset` once the data received before it is consumed. Dropping a [`Stream`]
//!   that is not finished both ways sends RST_STREAM (REFUSED_STREAM if it was never replied
//!   to, CANCEL otherwise).
//! - PINGs the peer starts (ids of the peer's parity: odd from a client) are echoed, as
//!   spdystream does; client-go's keep-alive pings wait for that echo. This side sends none.
//! - Malformed input (bad version, unknown DATA flags, an undecodable header block, DATA for a
//!   stream that was never opened, an oversized control frame) ends the session with
//!   GOAWAY(PROTOCOL_ERROR). A GOAWAY from the peer stops [`Session::accept`] (new SYN_STREAMs
//!   are refused) while open streams go on.
//!
//! # Flow control and backpressure
//! spdystream implements no SPDY/3.1 flow control: it never sends WINDOW_UPDATE and ignores
//! the ones it receives (and SETTINGS_INITIAL_WINDOW_SIZE). Honouring the 64 KiB initial send
//! window would therefore stall every transfer against a Go peer after 64 KiB, so this module
//! does the same as spdystream: no windows either way. Backpressure comes from the transport
//! instead, again like spdystream (whose per-stream data channel is unbuffered and blocks the
//! frame worker, then its bounded frame queue, then its read loop):
//! - inbound, each stream has a queue of [`STREAM_QUEUE`] chunks of at most [`MAX_CHUNK`]
//!   bytes; when it is full the session's read task waits, so it stops reading the transport
//!   and the peer's writes block. One slow reader therefore stalls every stream of its session
//!   (and PING echoes) until it reads; a dropped [`Stream`] never blocks (its data is
//!   discarded).
//! - outbound, all frames go through one writer task with a queue of [`WRITE_QUEUE`] frames;
//!   writes wait for a slot, and DATA frames carry at most [`MAX_CHUNK`] bytes so streams
//!   interleave.
//!
//! Memory per session is thus bounded by roughly `WRITE_QUEUE × MAX_CHUNK` plus
//! `STREAM_QUEUE × MAX_CHUNK` per open stream, whatever the transfer size.
//!
//! [moby/spdystream]: https://github.com/moby/spdystream

use std::collections::HashMap;
use std::fmt;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::PollSender;
use tracing::{debug, warn};

/// Largest DATA payload this module writes, and the size of the chunks received data is
/// queued in.
pub const MAX_CHUNK: usize = 32 * 1024;
/// Frames queued for the writer task before writers wait.
pub const WRITE_QUEUE: usize = 32;
/// Received chunks queued per stream before the session's read task waits.
pub const STREAM_QUEUE: usize = 8;
/// Opened streams queued for [`Session::accept`] before the read task waits.
const ACCEPT_QUEUE: usize = 32;
/// Largest control frame payload accepted (port-forward's are tens of bytes).
const MAX_CONTROL_LEN: usize = 1 << 20;
/// Largest inflated header block accepted.
const MAX_HEADER_BLOCK: usize = 1 << 20;
/// The writer batches queued frames into one transport write up to this size.
const WRITE_BATCH: usize = 64 * 1024;

const VERSION: u16 = 3;
const MAX_STREAM_ID: u32 = 0x7fff_ffff;

const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;

/// FLAG_FIN of DATA, SYN_STREAM, SYN_REPLY and HEADERS.
const FLAG_FIN: u8 = 0x01;
/// FLAG_UNIDIRECTIONAL of SYN_STREAM: the recipient may not send on the stream.
const FLAG_UNIDIRECTIONAL: u8 = 0x02;

const RST_PROTOCOL_ERROR: u32 = 1;
const RST_REFUSED_STREAM: u32 = 3;
const RST_CANCEL: u32 = 5;

const GOAWAY_OK: u32 = 0;
const GOAWAY_PROTOCOL_ERROR: u32 = 1;

/// Adler-32 of [`DICTIONARY`], the dictionary id in every header block's zlib header.
const DICTIONARY_ID: u32 = 0xe3c6_a7c2;

/// The SPDY/3 header compression dictionary: these names, each prefixed with its length as a
/// big-endian `u32`, then [`DICTIONARY_TAIL`] as is (1423 bytes in all).
const DICTIONARY_WORDS: [&str; 65] = [
    "options",
    "head",
    "post",
    "put",
    "delete",
    "trace",
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "connection",
    "content-base",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-md5",
    "content-range",
    "content-type",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "retry-after",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "warning",
    "www-authenticate",
    "method",
    "get",
    "status",
    "200 OK",
    "version",
    "HTTP/1.1",
    "url",
    "public",
    "set-cookie",
    "keep-alive",
    "origin",
];

const DICTIONARY_TAIL: &str = concat!(
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request",
    "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented",
    "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 ",
    "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,",
    "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=",
    "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
);

const DICTIONARY_LEN: usize = dictionary_len();
static DICTIONARY: [u8; DICTIONARY_LEN] = build_dictionary();

const fn dictionary_len() -> usize {
    let mut len = DICTIONARY_TAIL.len();
    let mut i = 0;
    while i < DICTIONARY_WORDS.len() {
        len += 4 + DICTIONARY_WORDS[i].len();
        i += 1;
    }
    len
}

const fn build_dictionary() -> [u8; DICTIONARY_LEN] {
    const fn copy(out: &mut [u8; DICTIONARY_LEN], at: usize, src: &[u8]) -> usize {
        let mut i = 0;
        while i < src.len() {
            out[at + i] = src[i];
            i += 1;
        }
        at + src.len()
    }
    let mut out = [0u8; DICTIONARY_LEN];
    let mut at = 0;
    let mut i = 0;
    while i < DICTIONARY_WORDS.len() {
        let word = DICTIONARY_WORDS[i].as_bytes();
        at = copy(&mut out, at, &(word.len() as u32).to_be_bytes());
        at = copy(&mut out, at, word);
        i += 1;
    }
    copy(&mut out, at, DICTIONARY_TAIL.as_bytes());
    out
}

/// Header names and values of a header block; names are lower case. A value the peer sent
/// NUL-separated appears as several entries with the same name.
pub type Headers = Vec<(String, String)>;

/// Why a session ends early.
#[derive(Debug, thiserror::Error)]
enum Fault {
    #[error("transport: {0}")]
    Io(#[from] io::Error),
    #[error("protocol error: {0}")]
    Protocol(String),
}

fn protocol<T>(msg: impl Into<String>) -> Result<T, Fault> {
    Err(Fault::Protocol(msg.into()))
}

/// One SPDY frame. DATA is only built by the sending side: received DATA is streamed chunk by
/// chunk without becoming a `Frame`.
#[derive(Debug, Clone, PartialEq)]
enum Frame {
    SynStream {
        id: u32,
        associated: u32,
        priority: u8,
        flags: u8,
        headers: Headers,
    },
    SynReply {
        id: u32,
        flags: u8,
        headers: Headers,
    },
    RstStream {
        id: u32,
        status: u32,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good: u32,
        status: u32,
    },
    Headers {
        id: u32,
        flags: u8,
        headers: Headers,
    },
    Data {
        id: u32,
        flags: u8,
        data: Bytes,
    },
    /// SETTINGS, WINDOW_UPDATE and unknown control frames, which are ignored.
    Ignored {
        kind: u16,
    },
}

/// Deflates header blocks for one direction of a session.
struct HeaderEncoder {
    zlib: Compress,
}

impl HeaderEncoder {
    fn new() -> io::Result<HeaderEncoder> {
        let mut zlib = Compress::new_with_window_bits(Compression::best(), true, 11);
        zlib.set_dictionary(&DICTIONARY).map_err(io::Error::other)?;
        Ok(HeaderEncoder { zlib })
    }

    /// Appends `headers` as one compressed, sync-flushed block to `out`.
    fn encode(&mut self, headers: &[(String, String)], out: &mut Vec<u8>) -> io::Result<()> {
        // One entry per name; repeated names become one NUL-separated value, as SPDY/3 wants.
        let mut merged: Vec<(String, String)> = Vec::with_capacity(headers.len());
        for (name, value) in headers {
            let name = name.to_ascii_lowercase();
            match merged.iter_mut().find(|(n, _)| *n == name) {
                Some((_, v)) => {
                    v.push('\0');
                    v.push_str(value);
                }
                None => merged.push((name, value.clone())),
            }
        }
        let mut raw = Vec::new();
        put_len(&mut raw, merged.len())?;
        for (name, value) in &merged {
            put_len(&mut raw, name.len())?;
            raw.extend_from_slice(name.as_bytes());
            put_len(&mut raw, value.len())?;
            raw.extend_from_slice(value.as_bytes());
        }
        let mut consumed = 0;
        loop {
            out.reserve(raw.len() - consumed + 64);
            let before = self.zlib.total_in();
            self.zlib
                .compress_vec(&raw[consumed..], out, FlushCompress::Sync)
                .map_err(io::Error::other)?;
            consumed += usize::try_from(self.zlib.total_in() - before).map_err(io::Error::other)?;
            // The sync flush is complete once all input is taken and output space was left.
            if consumed == raw.len() && out.len() < out.capacity() {
                return Ok(());
            }
        }
    }
}

fn put_len(out: &mut Vec<u8>, len: usize) -> io::Result<()> {
    let len = u32::try_from(len).map_err(|_| io::Error::other("header block too large"))?;
    out.extend_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Inflates the peer's header blocks for one session.
struct HeaderDecoder {
    zlib: Decompress,
}

impl HeaderDecoder {
    fn new() -> HeaderDecoder {
        HeaderDecoder {
            zlib: Decompress::new(true),
        }
    }

    /// Inflates one block (the peer sync-flushed it, so it decodes completely).
    fn inflate(&mut self, input: &[u8]) -> Result<Vec<u8>, Fault> {
        let mut out = Vec::with_capacity(input.len().saturating_mul(4).min(MAX_HEADER_BLOCK));
        let mut consumed = 0;
        loop {
            if out.len() == out.capacity() {
                if out.len() >= MAX_HEADER_BLOCK {
                    return protocol("header block too large");
                }
                out.reserve(out.len().max(256));
            }
            let (before_in, before_out) = (self.zlib.total_in(), out.len());
            let result =
                self.zlib
                    .decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync);
            let taken = usize::try_from(self.zlib.total_in() - before_in)
                .map_err(|_| Fault::Protocol("header block too large".into()))?;
            consumed += taken;
            match result {
                Ok(Status::Ok | Status::BufError) => {}
                Ok(Status::StreamEnd) => return protocol("header compression stream ended"),
                Err(e) => match e.needs_dictionary() {
                    Some(DICTIONARY_ID) => {
                        if let Err(e) = self.zlib.set_dictionary(&DICTIONARY) {
                            return protocol(format!("header dictionary: {e}"));
                        }
                        continue;
                    }
                    Some(other) => {
                        return protocol(format!("header block wants dictionary {other:#010x}"));
                    }
                    None => return protocol(format!("header block: {e}")),
                },
            }
            if consumed == input.len() && out.len() < out.capacity() {
                return Ok(out);
            }
            if taken == 0 && out.len() == before_out && out.len() < out.capacity() {
                return protocol("header block does not decode");
            }
        }
    }
}

/// Parses an inflated name/value block.
fn parse_block(mut raw: &[u8]) -> Result<Headers, Fault> {
    fn take<'a>(raw: &mut &'a [u8]) -> Result<&'a [u8], Fault> {
        if raw.len() < 4 {
            return protocol("truncated header block");
        }
        let len = raw.get_u32() as usize;
        if raw.len() < len {
            return protocol("truncated header block");
        }
        let (field, rest) = raw.split_at(len);
        *raw = rest;
        Ok(field)
    }
    if raw.len() < 4 {
        return protocol("truncated header block");
    }
    let count = raw.get_u32();
    let mut headers = Vec::new();
    for _ in 0..count {
        let name = take(&mut raw)?;
        let value = take(&mut raw)?;
        if name.is_empty() {
            return protocol("empty header name");
        }
        let name = String::from_utf8_lossy(name).to_ascii_lowercase();
        for value in value.split(|b| *b == 0) {
            headers.push((name.clone(), String::from_utf8_lossy(value).into_owned()));
        }
    }
    if !raw.is_empty() {
        return protocol("trailing bytes after header block");
    }
    Ok(headers)
}

/// Decodes the payload of a control frame of type `kind`.
fn decode_control(
    kind: u16,
    flags: u8,
    mut payload: &[u8],
    decoder: &mut HeaderDecoder,
) -> Result<Frame, Fault> {
    fn need(payload: &[u8], len: usize, what: &str) -> Result<(), Fault> {
        if payload.len() < len {
            return protocol(format!("{what} frame too short"));
        }
        Ok(())
    }
    let frame = match kind {
        SYN_STREAM => {
            need(payload, 10, "SYN_STREAM")?;
            let id = payload.get_u32() & MAX_STREAM_ID;
            let associated = payload.get_u32() & MAX_STREAM_ID;
            let priority = payload.get_u8() >> 5;
            let _slot = payload.get_u8();
            let headers = parse_block(&decoder.inflate(payload)?)?;
            Frame::SynStream {
                id,
                associated,
                priority,
                flags,
                headers,
            }
        }
        SYN_REPLY | HEADERS => {
            need(payload, 4, "SYN_REPLY/HEADERS")?;
            let id = payload.get_u32() & MAX_STREAM_ID;
            let headers = parse_block(&decoder.inflate(payload)?)?;
            if kind == SYN_REPLY {
                Frame::SynReply { id, flags, headers }
            } else {
                Frame::Headers { id, flags, headers }
            }
        }
        RST_STREAM => {
            need(payload, 8, "RST_STREAM")?;
            let id = payload.get_u32() & MAX_STREAM_ID;
            let status = payload.get_u32();
            Frame::RstStream { id, status }
        }
        PING => {
            need(payload, 4, "PING")?;
            Frame::Ping {
                id: payload.get_u32(),
            }
        }
        GOAWAY => {
            need(payload, 4, "GOAWAY")?;
            let last_good = payload.get_u32() & MAX_STREAM_ID;
            let status = if payload.len() >= 4 {
                payload.get_u32()
            } else {
                GOAWAY_OK
            };
            Frame::GoAway { last_good, status }
        }
        kind => Frame::Ignored { kind },
    };
    if matches!(
        frame,
        Frame::SynStream { id: 0, .. } | Frame::SynReply { id: 0, .. }
    ) {
        return protocol("stream id 0");
    }
    Ok(frame)
}

/// Appends `frame` in wire format to `out`.
fn encode(frame: &Frame, encoder: &mut HeaderEncoder, out: &mut BytesMut) -> io::Result<()> {
    fn control(out: &mut BytesMut, kind: u16, flags: u8, payload: &[u8]) -> io::Result<()> {
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|len| *len <= 0xff_ffff)
            .ok_or_else(|| io::Error::other("control frame too large"))?;
        out.put_u16(0x8000 | VERSION);
        out.put_u16(kind);
        out.put_u32(u32::from(flags) << 24 | len);
        out.put_slice(payload);
        Ok(())
    }
    let mut payload = Vec::new();
    match frame {
        Frame::SynStream {
            id,
            associated,
            priority,
            flags,
            headers,
        } => {
            payload.extend_from_slice(&id.to_be_bytes());
            payload.extend_from_slice(&associated.to_be_bytes());
            payload.push(priority << 5);
            payload.push(0);
            encoder.encode(headers, &mut payload)?;
            control(out, SYN_STREAM, *flags, &payload)
        }
        Frame::SynReply { id, flags, headers } | Frame::Headers { id, flags, headers } => {
            payload.extend_from_slice(&id.to_be_bytes());
            encoder.encode(headers, &mut payload)?;
            let kind = if matches!(frame, Frame::SynReply { .. }) {
                SYN_REPLY
            } else {
                HEADERS
            };
            control(out, kind, *flags, &payload)
        }
        Frame::RstStream { id, status } => {
            payload.extend_from_slice(&id.to_be_bytes());
            payload.extend_from_slice(&status.to_be_bytes());
            control(out, RST_STREAM, 0, &payload)
        }
        Frame::Ping { id } => control(out, PING, 0, &id.to_be_bytes()),
        Frame::GoAway { last_good, status } => {
            payload.extend_from_slice(&last_good.to_be_bytes());
            payload.extend_from_slice(&status.to_be_bytes());
            control(out, GOAWAY, 0, &payload)
        }
        Frame::Data { id, flags, data } => {
            let len = u32::try_from(data.len())
                .ok()
                .filter(|len| *len <= 0xff_ffff)
                .ok_or_else(|| io::Error::other("data frame too large"))?;
            out.put_u32(id & MAX_STREAM_ID);
            out.put_u32(u32::from(*flags) << 24 | len);
            out.put_slice(data);
            Ok(())
        }
        Frame::Ignored { kind } => Err(io::Error::other(format!(
            "cannot send control frame type {kind}"
        ))),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The maps guarded here stay consistent at every step, so a poisoned lock is still usable.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the peer did to one stream, written by the read task, read by the [`Stream`].
#[derive(Debug, Default)]
struct StreamState {
    remote_fin: AtomicBool,
    reset: AtomicBool,
}

/// Where the read task delivers a stream's frames; removed on FIN, RST or drop.
struct Route {
    data: mpsc::Sender<Bytes>,
    state: Arc<StreamState>,
    /// For streams opened here: told of the SYN_REPLY (or of the RST status refusing it).
    reply: Option<oneshot::Sender<Result<(), u32>>>,
}

/// State shared by the session handle, its streams and its read task.
struct Core {
    server: bool,
    routes: Mutex<HashMap<u32, Route>>,
    /// The next id for a stream opened here.
    next_local: AtomicU32,
    /// The highest id of a stream the peer opened.
    last_peer: AtomicU32,
    /// The read task ended: no more replies or data will arrive.
    closed: AtomicBool,
}

impl Core {
    /// Whether `id` names a stream that was opened at some point (by either side).
    fn opened(&self, id: u32) -> bool {
        let peer_parity = if self.server { 1 } else { 0 };
        if id % 2 == peer_parity {
            id <= self.last_peer.load(Ordering::Acquire)
        } else {
            id < self.next_local.load(Ordering::Acquire)
        }
    }
}

fn session_closed() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "spdy session closed")
}

/// A SPDY/3.1 session over a byte stream: a read task and a writer task own the transport.
pub struct Session {
    core: Arc<Core>,
    frames: mpsc::Sender<Frame>,
    incoming: mpsc::Receiver<Stream>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("server", &self.core.server)
            .field("open_streams", &lock(&self.core.routes).len())
            .finish()
    }
}

impl Session {
    /// Serves a SPDY/3.1 session on `io` as the server (the kubelet side of port-forward): the
    /// peer opens odd-numbered streams. Spawns the session's tasks, so it must be called
    /// inside a Tokio runtime.
    pub fn server<T>(io: T) -> Session
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        Session::start(io, true)
    }

    /// Runs a SPDY/3.1 session on `io` as the client (kubectl's side): streams opened here
    /// are odd-numbered. Must be called inside a Tokio runtime.
    pub fn client<T>(io: T) -> Session
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        Session::start(io, false)
    }

    fn start<T>(io: T, server: bool) -> Session
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (rd, wr) = tokio::io::split(io);
        let (frames, frames_rx) = mpsc::channel(WRITE_QUEUE);
        let (accept, incoming) = mpsc::channel(ACCEPT_QUEUE);
        let core = Arc::new(Core {
            server,
            routes: Mutex::default(),
            next_local: AtomicU32::new(if server { 2 } else { 1 }),
            last_peer: AtomicU32::new(0),
            closed: AtomicBool::new(false),
        });
        tokio::spawn(write_loop(wr, frames_rx));
        let reader = Reader {
            io: BufReader::with_capacity(MAX_CHUNK * 2, rd),
            decoder: HeaderDecoder::new(),
            core: core.clone(),
            frames: frames.clone(),
            accept: Some(accept),
        };
        tokio::spawn(reader.run());
        Session {
            core,
            frames,
            incoming,
        }
    }

    /// The next stream the peer opens (SYN_STREAM), in the order opened, or `None` once the
    /// session ended (GOAWAY, EOF, transport or protocol error). Reply to it with
    /// [`Stream::reply`].
    pub async fn accept(&mut self) -> Option<Stream> {
        self.incoming.recv().await
    }

    /// Opens a stream with `headers` (SYN_STREAM) and waits for the peer's SYN_REPLY. Fails
    /// with `ConnectionRefused` if the peer resets the stream instead.
    pub async fn open(&mut self, headers: &[(&str, &str)]) -> io::Result<Stream> {
        let id = self.core.next_local.load(Ordering::Acquire);
        if id > MAX_STREAM_ID {
            return Err(io::Error::other("spdy stream ids exhausted"));
        }
        let headers: Headers = headers
            .iter()
            .map(|(n, v)| (n.to_ascii_lowercase(), (*v).to_owned()))
            .collect();
        let (data, rx) = mpsc::channel(STREAM_QUEUE);
        let (reply_tx, reply_rx) = oneshot::channel();
        let state = Arc::new(StreamState::default());
        lock(&self.core.routes).insert(
            id,
            Route {
                data,
                state: state.clone(),
                reply: Some(reply_tx),
            },
        );
        // Published after the route, so the read task finds the route for any reply.
        self.core.next_local.store(id + 2, Ordering::Release);
        if self.core.closed.load(Ordering::SeqCst) {
            lock(&self.core.routes).remove(&id);
            return Err(session_closed());
        }
        let stream = Stream {
            id,
            headers: headers.clone(),
            state,
            core: self.core.clone(),
            rx,
            pending: Bytes::new(),
            tx: PollSender::new(self.frames.clone()),
            must_reply: false,
            local_fin: false,
        };
        let syn = Frame::SynStream {
            id,
            associated: 0,
            priority: 0,
            flags: 0,
            headers,
        };
        self.frames.send(syn).await.map_err(|_| session_closed())?;
        match reply_rx.await {
            Ok(Ok(())) => Ok(stream),
            Ok(Err(status)) => Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("spdy stream {id} reset by the peer (status {status})"),
            )),
            Err(_) => Err(session_closed()),
        }
    }

    /// Sends GOAWAY(OK): the peer should open no more streams; open streams go on.
    pub async fn go_away(&self) -> io::Result<()> {
        let last_good = self.core.last_peer.load(Ordering::Acquire);
        self.frames
            .send(Frame::GoAway {
                last_good,
                status: GOAWAY_OK,
            })
            .await
            .map_err(|_| session_closed())
    }
}

/// Writes queued frames to the transport, batching what is queued; owns the outbound header
/// compression context so blocks are compressed in wire order. Ends when every sender is gone,
/// on a transport error, or after sending GOAWAY with an error status.
async fn write_loop<W: AsyncWrite + Unpin>(mut io: W, mut frames: mpsc::Receiver<Frame>) {
    let mut encoder = match HeaderEncoder::new() {
        Ok(encoder) => encoder,
        Err(e) => {
            warn!("spdy header compression: {e}");
            return;
        }
    };
    let mut buf = BytesMut::with_capacity(WRITE_BATCH);
    while let Some(first) = frames.recv().await {
        let mut fatal = false;
        let mut next = Some(first);
        while let Some(frame) = next.take() {
            fatal |= matches!(frame, Frame::GoAway { status, .. } if status != GOAWAY_OK);
            if let Err(e) = encode(&frame, &mut encoder, &mut buf) {
                warn!("spdy: encoding a frame: {e}");
                return;
            }
            if buf.len() < WRITE_BATCH && !fatal {
                next = frames.try_recv().ok();
            }
        }
        if let Err(e) = io.write_all(&buf).await {
            debug!("spdy: writing: {e}");
            return;
        }
        if let Err(e) = io.flush().await {
            debug!("spdy: flushing: {e}");
            return;
        }
        buf.clear();
        if fatal {
            break;
        }
    }
    if let Err(e) = io.shutdown().await {
        debug!("spdy: closing the transport: {e}");
    }
}

/// Queues `frame` for the writer. A failure means the writer is gone; the read side notices
/// the end by itself.
async fn send(frames: &mpsc::Sender<Frame>, frame: Frame) {
    let _ = frames.send(frame).await;
}

/// The session's read task: parses frames and dispatches them to streams.
struct Reader<R> {
    io: BufReader<R>,
    decoder: HeaderDecoder,
    core: Arc<Core>,
    frames: mpsc::Sender<Frame>,
    /// Where new peer streams go; `None` after the peer's GOAWAY.
    accept: Option<mpsc::Sender<Stream>>,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    async fn run(mut self) {
        match self.serve().await {
            Ok(()) => debug!("spdy session ended by the peer"),
            Err(Fault::Io(e)) => debug!("spdy session ended: {e}"),
            Err(Fault::Protocol(msg)) => {
                warn!("spdy session ended: protocol error: {msg}");
                let last_good = self.core.last_peer.load(Ordering::Acquire);
                let goaway = Frame::GoAway {
                    last_good,
                    status: GOAWAY_PROTOCOL_ERROR,
                };
                // The writer may be gone already; the session ends either way.
                let _ = self.frames.send(goaway).await;
            }
        }
        // Dropping the routes ends every stream's reads (EOF after a FIN, an error otherwise)
        // and fails pending opens; `closed` fails later ones (set first: `open` checks it
        // after inserting its route).
        self.core.closed.store(true, Ordering::SeqCst);
        lock(&self.core.routes).clear();
    }

    async fn serve(&mut self) -> Result<(), Fault> {
        loop {
            let mut head = [0u8; 8];
            match self.io.read_exact(&mut head).await {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e.into()),
            }
            let mut head = &head[..];
            let first = head.get_u32();
            let second = head.get_u32();
            let flags = (second >> 24) as u8;
            let len = (second & 0xff_ffff) as usize;
            if first & 0x8000_0000 == 0 {
                self.data(first, flags, len).await?;
                continue;
            }
            let version = (first >> 16) as u16 & 0x7fff;
            if version != VERSION {
                return protocol(format!("unsupported SPDY version {version}"));
            }
            if len > MAX_CONTROL_LEN {
                return protocol(format!("control frame of {len} bytes"));
            }
            let mut payload = vec![0; len];
            self.io.read_exact(&mut payload).await?;
            let frame = decode_control(first as u16, flags, &payload, &mut self.decoder)?;
            self.handle(frame).await?;
        }
    }

    /// Streams one DATA frame's payload to its stream in chunks, or discards it.
    async fn data(&mut self, id: u32, flags: u8, len: usize) -> Result<(), Fault> {
        if id == 0 {
            return protocol("DATA on stream 0");
        }
        if flags & !FLAG_FIN != 0 {
            return protocol(format!("DATA with unknown flags {flags:#04x}"));
        }
        if !self.core.opened(id) {
            return protocol(format!("DATA on stream {id}, which was never opened"));
        }
        let mut sink = lock(&self.core.routes).get(&id).map(|r| r.data.clone());
        let mut remaining = len;
        while remaining > 0 {
            let n = remaining.min(MAX_CHUNK);
            let mut chunk = vec![0; n];
            self.io.read_exact(&mut chunk).await?;
            remaining -= n;
            // Waiting here is the session's backpressure (see the module docs).
            if let Some(tx) = &sink
                && tx.send(Bytes::from(chunk)).await.is_err()
            {
                // The stream was dropped: discard the rest.
                sink = None;
            }
        }
        if flags & FLAG_FIN != 0 {
            self.remote_fin(id);
        }
        Ok(())
    }

    fn remote_fin(&self, id: u32) {
        if let Some(route) = lock(&self.core.routes).remove(&id) {
            route.state.remote_fin.store(true, Ordering::Release);
        }
    }

    async fn handle(&mut self, frame: Frame) -> Result<(), Fault> {
        match frame {
            Frame::SynStream {
                id, flags, headers, ..
            } => self.syn_stream(id, flags, headers).await,
            Frame::SynReply { id, flags, .. } => {
                if let Some(reply) = lock(&self.core.routes)
                    .get_mut(&id)
                    .and_then(|r| r.reply.take())
                {
                    let _ = reply.send(Ok(()));
                }
                if flags & FLAG_FIN != 0 {
                    self.remote_fin(id);
                }
            }
            Frame::Headers { id, flags, .. } => {
                if flags & FLAG_FIN != 0 {
                    self.remote_fin(id);
                }
            }
            Frame::RstStream { id, status } => {
                if let Some(mut route) = lock(&self.core.routes).remove(&id) {
                    route.state.reset.store(true, Ordering::Release);
                    if let Some(reply) = route.reply.take() {
                        let _ = reply.send(Err(status));
                    }
                }
            }
            Frame::Ping { id } => {
                // Our own pings would have our parity (servers even, clients odd); we send
                // none, so only the peer's need an answer.
                let ours = if self.core.server { 0 } else { 1 };
                if id % 2 != ours {
                    send(&self.frames, Frame::Ping { id }).await;
                }
            }
            Frame::GoAway { .. } => {
                debug!("spdy: the peer sent GOAWAY");
                self.accept = None;
            }
            Frame::Data { .. } | Frame::Ignored { .. } => {}
        }
        Ok(())
    }

    async fn syn_stream(&mut self, id: u32, flags: u8, headers: Headers) {
        let peer_parity = if self.core.server { 1 } else { 0 };
        if id % 2 != peer_parity || id <= self.core.last_peer.load(Ordering::Acquire) {
            warn!("spdy: SYN_STREAM with invalid id {id}");
            send(
                &self.frames,
                Frame::RstStream {
                    id,
                    status: RST_PROTOCOL_ERROR,
                },
            )
            .await;
            return;
        }
        self.core.last_peer.store(id, Ordering::Release);
        let Some(accept) = self.accept.as_ref().filter(|a| !a.is_closed()).cloned() else {
            send(
                &self.frames,
                Frame::RstStream {
                    id,
                    status: RST_REFUSED_STREAM,
                },
            )
            .await;
            return;
        };
        let (data, rx) = mpsc::channel(STREAM_QUEUE);
        let state = Arc::new(StreamState::default());
        if flags & FLAG_FIN != 0 {
            state.remote_fin.store(true, Ordering::Release);
        } else {
            lock(&self.core.routes).insert(
                id,
                Route {
                    data,
                    state: state.clone(),
                    reply: None,
                },
            );
        }
        let stream = Stream {
            id,
            headers,
            state,
            core: self.core.clone(),
            rx,
            pending: Bytes::new(),
            tx: PollSender::new(self.frames.clone()),
            must_reply: true,
            local_fin: flags & FLAG_UNIDIRECTIONAL != 0,
        };
        // If the session handle is gone the stream is dropped, which refuses it.
        let _ = accept.send(stream).await;
    }
}

/// One SPDY stream: read what the peer sends, write (after [`Stream::reply`] for a stream the
/// peer opened) what it should receive.
pub struct Stream {
    id: u32,
    headers: Headers,
    state: Arc<StreamState>,
    core: Arc<Core>,
    rx: mpsc::Receiver<Bytes>,
    /// Received bytes not yet read.
    pending: Bytes,
    tx: PollSender<Frame>,
    /// The peer opened the stream and has not had its SYN_REPLY yet.
    must_reply: bool,
    /// We sent FIN (or may not send at all).
    local_fin: bool,
}

impl fmt::Debug for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stream")
            .field("id", &self.id)
            .field("headers", &self.headers)
            .field("local_fin", &self.local_fin)
            .field("state", &self.state)
            .finish()
    }
}

impl Stream {
    /// The stream id: odd for streams the client opened, even for the server's.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The headers of the SYN_STREAM (names lower case), as received or sent.
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// The first value of header `name` (compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Sends SYN_REPLY with no headers, accepting a stream the peer opened. Does nothing for
    /// streams opened here or already replied to.
    pub async fn reply(&mut self) -> io::Result<()> {
        poll_fn(|cx| self.poll_reply(cx)).await
    }

    /// Resets the stream (RST_STREAM with CANCEL): both directions end at once, and further
    /// reads and writes fail with `ConnectionReset`.
    pub async fn reset(&mut self) -> io::Result<()> {
        if self.state.reset.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        lock(&self.core.routes).remove(&self.id);
        poll_fn(|cx| self.tx.poll_reserve(cx))
            .await
            .map_err(|_| session_closed())?;
        self.tx
            .send_item(Frame::RstStream {
                id: self.id,
                status: RST_CANCEL,
            })
            .map_err(|_| session_closed())
    }

    fn poll_reply(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.must_reply {
            return Poll::Ready(Ok(()));
        }
        if self.state.reset.load(Ordering::Acquire) {
            return Poll::Ready(Err(reset_error(self.id)));
        }
        ready!(self.tx.poll_reserve(cx)).map_err(|_| session_closed())?;
        self.tx
            .send_item(Frame::SynReply {
                id: self.id,
                flags: 0,
                headers: Vec::new(),
            })
            .map_err(|_| session_closed())?;
        self.must_reply = false;
        Poll::Ready(Ok(()))
    }

    /// Queues one DATA frame once the stream may send.
    fn poll_send_data(
        &mut self,
        cx: &mut Context<'_>,
        data: &[u8],
        flags: u8,
    ) -> Poll<io::Result<()>> {
        if self.state.reset.load(Ordering::Acquire) {
            return Poll::Ready(Err(reset_error(self.id)));
        }
        if self.local_fin {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                format!("spdy stream {} is closed for writing", self.id),
            )));
        }
        ready!(self.poll_reply(cx))?;
        ready!(self.tx.poll_reserve(cx)).map_err(|_| session_closed())?;
        let frame = Frame::Data {
            id: self.id,
            flags,
            data: Bytes::copy_from_slice(data),
        };
        self.tx.send_item(frame).map_err(|_| session_closed())?;
        Poll::Ready(Ok(()))
    }
}

fn reset_error(id: u32) -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionReset,
        format!("spdy stream {id} was reset"),
    )
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pending.is_empty() {
            match ready!(this.rx.poll_recv(cx)) {
                Some(chunk) => this.pending = chunk,
                None if this.state.remote_fin.load(Ordering::Acquire) => {
                    return Poll::Ready(Ok(()));
                }
                None if this.state.reset.load(Ordering::Acquire) => {
                    return Poll::Ready(Err(reset_error(this.id)));
                }
                None => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("spdy session ended before stream {} finished", this.id),
                    )));
                }
            }
        }
        let n = this.pending.len().min(buf.remaining());
        buf.put_slice(&this.pending[..n]);
        this.pending.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = buf.len().min(MAX_CHUNK);
        let this = self.get_mut();
        ready!(this.poll_send_data(cx, &buf[..n], 0))?;
        Poll::Ready(Ok(n))
    }

    /// Data is handed to the session's writer task, which flushes the transport.
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Sends FIN (an empty DATA frame with FLAG_FIN); reads go on until the peer's FIN.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.local_fin {
            return Poll::Ready(Ok(()));
        }
        ready!(this.poll_send_data(cx, &[], FLAG_FIN))?;
        this.local_fin = true;
        Poll::Ready(Ok(()))
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        lock(&self.core.routes).remove(&self.id);
        let finished = self.local_fin && self.state.remote_fin.load(Ordering::Acquire);
        if finished || self.state.reset.swap(true, Ordering::AcqRel) {
            return;
        }
        let status = if self.must_reply {
            RST_REFUSED_STREAM
        } else {
            RST_CANCEL
        };
        let rst = Frame::RstStream {
            id: self.id,
            status,
        };
        let Some(tx) = self.tx.get_ref() else {
            return;
        };
        match tx.try_send(rst) {
            Ok(()) | Err(TrySendError::Closed(_)) => {}
            Err(TrySendError::Full(rst)) => {
                // Drop cannot wait for the writer; a task can (one per dropped stream).
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    let tx = tx.clone();
                    runtime.spawn(async move {
                        let _ = tx.send(rst).await;
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use tokio::io::{DuplexStream, duplex};

    use super::*;

    /// Fails the test instead of hanging: time is paused, so the timeout only fires once every
    /// task is blocked, which is a deadlock.
    async fn within<T>(fut: impl Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(3600), fut)
            .await
            .expect("every task is blocked: deadlock")
    }

    fn pair() -> (Session, Session) {
        let (a, b) = duplex(64 * 1024);
        (Session::server(a), Session::client(b))
    }

    fn headers(pairs: &[(&str, &str)]) -> Headers {
        pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn pattern(seed: usize, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| ((i * 7 + seed * 13) % 251) as u8)
            .collect()
    }

    async fn write_pattern(mut w: impl AsyncWrite + Unpin, seed: usize, len: usize) {
        for chunk in pattern(seed, len).chunks(50_000) {
            w.write_all(chunk).await.expect("write");
        }
        w.shutdown().await.expect("shutdown");
    }

    /// Reads to EOF in small reads, yielding in between, checking every byte.
    async fn read_slowly(mut r: impl AsyncRead + Unpin, seed: usize, len: usize) {
        let expected = pattern(seed, len);
        let mut buf = [0u8; 1000];
        let mut got = 0;
        loop {
            let n = r.read(&mut buf).await.expect("read");
            if n == 0 {
                break;
            }
            assert!(
                expected.get(got..got + n) == Some(&buf[..n]),
                "stream {seed}: bytes {got}..{} differ",
                got + n
            );
            got += n;
            tokio::task::yield_now().await;
        }
        assert_eq!(got, len, "stream {seed}: length");
    }

    /// The far end of a session, speaking raw frames.
    struct Raw {
        io: DuplexStream,
        encoder: HeaderEncoder,
        decoder: HeaderDecoder,
    }

    impl Raw {
        async fn send(&mut self, frame: &Frame) {
            let mut buf = BytesMut::new();
            encode(frame, &mut self.encoder, &mut buf).expect("encode");
            self.io.write_all(&buf).await.expect("raw write");
        }

        async fn recv(&mut self) -> Option<Frame> {
            let mut head = [0u8; 8];
            self.io.read_exact(&mut head).await.ok()?;
            let mut head = &head[..];
            let (first, second) = (head.get_u32(), head.get_u32());
            let mut payload = vec![0; (second & 0xff_ffff) as usize];
            self.io.read_exact(&mut payload).await.expect("payload");
            let flags = (second >> 24) as u8;
            if first & 0x8000_0000 == 0 {
                return Some(Frame::Data {
                    id: first,
                    flags,
                    data: payload.into(),
                });
            }
            Some(
                decode_control(first as u16, flags, &payload, &mut self.decoder)
                    .expect("a valid control frame"),
            )
        }
    }

    fn raw_server() -> (Session, Raw) {
        let (a, b) = duplex(64 * 1024);
        let raw = Raw {
            io: b,
            encoder: HeaderEncoder::new().expect("encoder"),
            decoder: HeaderDecoder::new(),
        };
        (Session::server(a), raw)
    }

    fn syn(id: u32, flags: u8, pairs: &[(&str, &str)]) -> Frame {
        Frame::SynStream {
            id,
            associated: 0,
            priority: 0,
            flags,
            headers: headers(pairs),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn accepts_port_forward_streams_in_order_with_headers() {
        let (mut server, mut client) = pair();
        let accepted = tokio::spawn(async move {
            let mut streams = Vec::new();
            for _ in 0..2 {
                let mut stream = server.accept().await.expect("a stream");
                stream.reply().await.expect("reply");
                streams.push(stream);
            }
            streams
        });
        let error = within(client.open(&[
            ("streamType", "error"),
            ("port", "8080"),
            ("requestID", "0"),
        ]))
        .await
        .expect("open the error stream");
        let data =
            within(client.open(&[("streamtype", "data"), ("port", "8080"), ("requestid", "0")]))
                .await
                .expect("open the data stream");
        let accepted = within(accepted).await.expect("server task");
        assert_eq!((error.id(), data.id()), (1, 3));
        assert_eq!(accepted[0].id(), 1);
        assert_eq!(
            accepted[0].headers(),
            headers(&[
                ("streamtype", "error"),
                ("port", "8080"),
                ("requestid", "0")
            ])
        );
        assert_eq!(accepted[1].id(), 3);
        assert_eq!(accepted[1].header("StreamType"), Some("data"));
        assert_eq!(accepted[1].header("port"), Some("8080"));
        assert_eq!(accepted[1].header("requestid"), Some("0"));
        assert_eq!(accepted[1].header("missing"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn moves_ten_mib_each_way_with_slow_readers() {
        const LEN: usize = 10 << 20;
        let (mut server, mut client) = pair();
        let served = tokio::spawn(async move {
            let mut stream = server.accept().await.expect("a stream");
            stream.reply().await.expect("reply");
            let (r, w) = tokio::io::split(stream);
            tokio::join!(write_pattern(w, 1, LEN), read_slowly(r, 2, LEN));
        });
        let stream = within(client.open(&[("streamtype", "data")]))
            .await
            .expect("open");
        let (r, w) = tokio::io::split(stream);
        within(async { tokio::join!(write_pattern(w, 2, LEN), read_slowly(r, 1, LEN)) }).await;
        within(served).await.expect("server task");
    }

    /// Opens one stream from `client`, accepted and replied to by `server`.
    async fn open_pair(
        server: &mut Session,
        client: &mut Session,
        pairs: &[(&str, &str)],
    ) -> (Stream, Stream) {
        within(async {
            let (accepted, opened) = tokio::join!(
                async {
                    let mut stream = server.accept().await.expect("a stream");
                    stream.reply().await.expect("reply");
                    stream
                },
                client.open(pairs)
            );
            (accepted, opened.expect("open"))
        })
        .await
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_reader_bounds_what_the_session_buffers() {
        const LEN: usize = 10 << 20;
        let (mut server, mut client) = pair();
        let (mut server_stream, mut client_stream) =
            open_pair(&mut server, &mut client, &[("streamtype", "data")]).await;
        let written = Arc::new(AtomicUsize::new(0));
        let counter = written.clone();
        let writer = tokio::spawn(async move {
            for chunk in pattern(0, LEN).chunks(16 * 1024) {
                client_stream.write_all(chunk).await.expect("write");
                counter.fetch_add(chunk.len(), Ordering::Relaxed);
            }
            client_stream.shutdown().await.expect("shutdown");
        });
        // Nothing reads the server stream, so once every task is blocked (paused time only
        // advances then) the writer must have stalled well short of 10 MiB.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let stalled_at = written.load(Ordering::Relaxed);
        assert!(
            stalled_at > 0 && stalled_at < 2 << 20,
            "the writer got {stalled_at} bytes into an unread stream"
        );
        // Reading resumes the transfer, intact.
        within(read_slowly(&mut server_stream, 0, LEN)).await;
        within(writer).await.expect("writer task");
    }

    #[tokio::test(start_paused = true)]
    async fn twenty_streams_interleave() {
        const LEN: usize = 200_000;
        let (mut server, mut client) = pair();
        tokio::spawn(async move {
            while let Some(mut stream) = server.accept().await {
                tokio::spawn(async move {
                    stream.reply().await.expect("reply");
                    let (mut r, mut w) = tokio::io::split(stream);
                    tokio::io::copy(&mut r, &mut w).await.expect("echo");
                    w.shutdown().await.expect("shutdown");
                });
            }
        });
        let mut echoes = tokio::task::JoinSet::new();
        for seed in 0..20 {
            let stream = within(client.open(&[("streamtype", "data")]))
                .await
                .expect("open");
            echoes.spawn(async move {
                let (r, w) = tokio::io::split(stream);
                tokio::join!(write_pattern(w, seed, LEN), read_slowly(r, seed, LEN));
            });
        }
        within(async {
            while let Some(done) = echoes.join_next().await {
                done.expect("echo task");
            }
        })
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn fin_ends_each_direction_separately() {
        let (mut server, mut client) = pair();
        let (mut on_server, mut on_client) =
            open_pair(&mut server, &mut client, &[("streamtype", "data")]).await;
        on_client.write_all(b"hello").await.expect("write");
        on_client.shutdown().await.expect("shutdown");
        let err = on_client
            .write_all(b"more")
            .await
            .expect_err("write after FIN");
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
        let mut got = Vec::new();
        within(on_server.read_to_end(&mut got)).await.expect("read");
        assert_eq!(got, b"hello");
        // The server's direction is still open after the client's FIN.
        on_server.write_all(b"bye").await.expect("write");
        on_server.shutdown().await.expect("shutdown");
        let mut got = Vec::new();
        within(on_client.read_to_end(&mut got)).await.expect("read");
        assert_eq!(got, b"bye");
        // Both finished: dropping sends no RST, and the session goes on.
        drop((on_server, on_client));
        let (mut s, mut c) = open_pair(&mut server, &mut client, &[("n", "2")]).await;
        c.write_all(b"x").await.expect("write");
        let mut one = [0u8; 1];
        within(s.read_exact(&mut one)).await.expect("read");
        assert_eq!(s.id(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn reset_fails_reads_and_writes() {
        let (mut server, mut client) = pair();
        let (mut on_server, mut on_client) =
            open_pair(&mut server, &mut client, &[("streamtype", "data")]).await;
        on_client.write_all(b"before").await.expect("write");
        on_client.reset().await.expect("reset");
        let mut got = [0u8; 6];
        // Data sent before the RST is still delivered, then reads fail.
        within(on_server.read_exact(&mut got)).await.expect("read");
        assert_eq!(&got, b"before");
        let err = within(on_server.read(&mut got))
            .await
            .expect_err("read after RST");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        let err = on_server
            .write_all(b"x")
            .await
            .expect_err("write after RST");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        let err = on_client
            .read(&mut got)
            .await
            .expect_err("read after own RST");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);

        // Dropping an unfinished stream resets it.
        let (on_server, mut on_client) = open_pair(&mut server, &mut client, &[("n", "2")]).await;
        drop(on_server);
        let err = within(on_client.read(&mut got))
            .await
            .expect_err("read after drop");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);

        // Dropping a stream without replying refuses it.
        let refused = tokio::spawn(async move {
            drop(server.accept().await.expect("a stream"));
            server
        });
        let err = within(client.open(&[("n", "3")]))
            .await
            .expect_err("refused");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
        refused.await.expect("server task");
    }

    #[tokio::test(start_paused = true)]
    async fn echoes_the_peers_pings_only() {
        let (_server, mut raw) = raw_server();
        // Even ids are the server's own; an even PING is an answer and gets none.
        raw.send(&Frame::Ping { id: 2 }).await;
        raw.send(&Frame::Ping { id: 1 }).await;
        assert_eq!(within(raw.recv()).await, Some(Frame::Ping { id: 1 }));
        raw.send(&Frame::Ping { id: 7 }).await;
        assert_eq!(within(raw.recv()).await, Some(Frame::Ping { id: 7 }));
    }

    #[tokio::test(start_paused = true)]
    async fn header_blocks_share_one_zlib_context_per_direction() {
        let error = headers(&[
            ("streamtype", "error"),
            ("port", "8080"),
            ("requestid", "0"),
        ]);
        let data = headers(&[("streamtype", "data"), ("port", "8080"), ("requestid", "0")]);
        let mut encoder = HeaderEncoder::new().expect("encoder");
        let (mut first, mut second) = (Vec::new(), Vec::new());
        encoder.encode(&error, &mut first).expect("encode");
        encoder.encode(&data, &mut second).expect("encode");
        assert!(
            second.len() * 2 < first.len(),
            "the second block ({} bytes) should refer back to the first ({} bytes)",
            second.len(),
            first.len()
        );
        assert!(
            HeaderDecoder::new().inflate(&second).is_err(),
            "the second block alone must not decode"
        );
        let mut decoder = HeaderDecoder::new();
        let inflated = decoder.inflate(&first).expect("first block");
        assert_eq!(parse_block(&inflated).expect("parse"), error);
        let inflated = decoder.inflate(&second).expect("second block");
        assert_eq!(parse_block(&inflated).expect("parse"), data);

        // Through a session: SYN_STREAM, HEADERS, SYN_STREAM, all from one context.
        let (mut server, mut raw) = raw_server();
        let pairs = [
            ("streamtype", "error"),
            ("port", "8080"),
            ("requestid", "0"),
        ];
        raw.send(&syn(1, 0, &pairs)).await;
        raw.send(&Frame::Headers {
            id: 1,
            flags: 0,
            headers: headers(&[("x-extra", "1")]),
        })
        .await;
        raw.send(&syn(
            3,
            0,
            &[("streamtype", "data"), ("port", "8080"), ("requestid", "0")],
        ))
        .await;
        let first = within(server.accept()).await.expect("stream 1");
        let second = within(server.accept()).await.expect("stream 3");
        assert_eq!(first.headers(), error);
        assert_eq!(second.headers(), data);
    }

    /// Two SYN_STREAM header blocks from another implementation: CPython's `zlib` (C zlib),
    /// level 9, 32 KiB window (header `78 f9`, as Go writes), the SPDY/3 dictionary, one
    /// context, sync-flushed after each block:
    /// `streamtype: error|data, port: 8080, requestid: 0`.
    const C_ZLIB_BLOCKS: [&str; 2] = [
        "78f9e3c6a7c202253a703a2b294a4dcc851625aca9a0808614cb45e01c6061606100a4398b20d198094ade8c0600000000ffff",
        "c2aa19540e2512d60b000000ffff",
    ];

    fn unhex(hex: &str) -> Vec<u8> {
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn decodes_header_blocks_from_c_zlib() {
        let (mut server, mut raw) = raw_server();
        for (id, block) in [1u32, 3].into_iter().zip(C_ZLIB_BLOCKS) {
            let block = unhex(block);
            let mut frame = vec![0x80, 0x03, 0x00, 0x01];
            frame.extend_from_slice(&(10 + block.len() as u32).to_be_bytes());
            frame.extend_from_slice(&id.to_be_bytes());
            frame.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
            frame.extend_from_slice(&block);
            raw.io.write_all(&frame).await.expect("raw write");
        }
        for kind in ["error", "data"] {
            let stream = within(server.accept()).await.expect("a stream");
            assert_eq!(
                stream.headers(),
                headers(&[("streamtype", kind), ("port", "8080"), ("requestid", "0")])
            );
        }
    }

    #[test]
    fn dictionary_and_zlib_header_match_spdy3() {
        fn adler32(data: &[u8]) -> u32 {
            let (mut a, mut b) = (1u32, 0u32);
            for byte in data {
                a = (a + u32::from(*byte)) % 65521;
                b = (b + a) % 65521;
            }
            b << 16 | a
        }
        assert_eq!(DICTIONARY.len(), 1423);
        assert!(DICTIONARY.starts_with(b"\0\0\0\x07options\0\0\0\x04head"));
        assert!(DICTIONARY.ends_with(b"utf-,*,enq=0."));
        assert_eq!(adler32(&DICTIONARY), 0xe3c6_a7c2);
        assert_eq!(DICTIONARY_ID, 0xe3c6_a7c2);

        let mut encoder = HeaderEncoder::new().expect("encoder");
        let mut wire = BytesMut::new();
        let frame = syn(1, 0, &[("streamtype", "error")]);
        encode(&frame, &mut encoder, &mut wire).expect("encode");
        // Control bit + version 3, type 1, no flags, then the stream id, no associated
        // stream, priority 0, slot 0, then zlib: 2 KiB window, level 9, FDICT (`38 ea`) and
        // the dictionary's Adler-32.
        assert_eq!(&wire[..4], &[0x80, 0x03, 0x00, 0x01]);
        assert_eq!(wire[4], 0);
        let len = u32::from_be_bytes([0, wire[5], wire[6], wire[7]]) as usize;
        assert_eq!(len, wire.len() - 8);
        assert_eq!(&wire[8..18], &[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&wire[18..24], &[0x38, 0xea, 0xe3, 0xc6, 0xa7, 0xc2]);
        assert_eq!((0x38u32 * 256 + 0xea) % 31, 0, "zlib header check bits");
        let decoded =
            decode_control(SYN_STREAM, 0, &wire[8..], &mut HeaderDecoder::new()).expect("decode");
        assert_eq!(decoded, frame);
    }

    #[tokio::test(start_paused = true)]
    async fn goaway_stops_accepting_but_not_open_streams() {
        let (mut server, mut raw) = raw_server();
        raw.send(&syn(1, 0, &[("streamtype", "data")])).await;
        raw.send(&Frame::GoAway {
            last_good: 0,
            status: GOAWAY_OK,
        })
        .await;
        raw.send(&syn(3, 0, &[("streamtype", "late")])).await;
        raw.send(&Frame::Data {
            id: 1,
            flags: FLAG_FIN,
            data: Bytes::from_static(b"still here"),
        })
        .await;
        let mut stream = within(server.accept()).await.expect("stream 1");
        assert!(
            within(server.accept()).await.is_none(),
            "accepted after GOAWAY"
        );
        assert_eq!(
            within(raw.recv()).await,
            Some(Frame::RstStream {
                id: 3,
                status: RST_REFUSED_STREAM
            })
        );
        let mut got = Vec::new();
        within(stream.read_to_end(&mut got)).await.expect("read");
        assert_eq!(got, b"still here");
    }

    #[tokio::test(start_paused = true)]
    async fn garbage_ends_the_session_with_goaway() {
        let garbage: [&[u8]; 5] = [
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            // A control frame of SPDY/2.
            &[0x80, 0x02, 0x00, 0x06, 0, 0, 0, 4, 0, 0, 0, 1],
            // A SYN_STREAM whose header block is not zlib.
            &[
                0x80, 0x03, 0x00, 0x01, 0, 0, 0, 14, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4,
            ],
            // DATA on a stream never opened.
            &[0, 0, 0, 5, 0, 0, 0, 1, 0x42],
            // A control frame claiming 16 MiB.
            &[0x80, 0x03, 0x00, 0x04, 0, 0xff, 0xff, 0xff],
        ];
        for input in garbage {
            let (mut server, mut raw) = raw_server();
            raw.io.write_all(input).await.expect("raw write");
            assert_eq!(
                within(raw.recv()).await,
                Some(Frame::GoAway {
                    last_good: 0,
                    status: GOAWAY_PROTOCOL_ERROR
                }),
                "after {input:?}"
            );
            assert_eq!(within(raw.recv()).await, None, "closed after GOAWAY");
            assert!(within(server.accept()).await.is_none());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn random_input_never_panics() {
        // xorshift, so the inputs are the same on every run.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut valid = Vec::new();
        HeaderEncoder::new()
            .expect("encoder")
            .encode(
                &headers(&[("streamtype", "data"), ("port", "80")]),
                &mut valid,
            )
            .expect("encode");
        for round in 0..2000 {
            let len = (next() % 64) as usize;
            let mut payload: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if round % 2 == 0 {
                // A valid block with a few bytes flipped reaches deeper into the decoder.
                payload = valid.clone();
                for _ in 0..3 {
                    let at = (next() as usize) % payload.len();
                    payload[at] ^= next() as u8;
                }
                let mut frame = vec![0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
                frame.extend_from_slice(&payload);
                payload = frame;
            }
            let kind = (next() % 10) as u16;
            let _ = decode_control(kind, next() as u8, &payload, &mut HeaderDecoder::new());
            let _ = parse_block(&payload);
        }
        for _ in 0..50 {
            let (mut server, mut raw) = raw_server();
            let len = (next() % 256) as usize;
            let input: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            raw.io.write_all(&input).await.expect("raw write");
            raw.io.shutdown().await.expect("raw shutdown");
            within(async { while server.accept().await.is_some() {} }).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn open_fails_once_the_peer_is_gone() {
        let (a, b) = duplex(1024);
        let mut client = Session::client(a);
        drop(b);
        let err = within(client.open(&[("streamtype", "data")]))
            .await
            .expect_err("open on a closed transport");
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }
}
