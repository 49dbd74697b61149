//! Kubernetes' streaming protocols over WebSocket, both ends: what the kubelet serves and
//! what `xkubectl exec/attach/port-forward/cp` speaks (the apiserver passes the upgraded
//! connection through byte for byte).
//!
//! - exec and attach: the channel protocols `v5.channel.k8s.io` and `v4.channel.k8s.io`. Every
//!   binary message is one channel byte then data: 0 stdin, 1 stdout, 2 stderr, 3 error (a
//!   `Status` as JSON when the command ends), 4 resize (`{"Width":80,"Height":24}`); v5 adds
//!   `[255, channel]`, the client closing its stdin.
//! - port-forward, as the official clients speak it over WebSocket (`v4.channel.k8s.io`,
//!   `portforward.k8s.io`): `?ports=a,b` opens one TCP connection per port; port `i` has data
//!   channel `2i` and error channel `2i+1`, and the first message the server sends on each
//!   channel is the port number (2 bytes, little endian).
//! - port-forward as kubectl 1.31+ speaks it: SPDY/3.1 tunnelled in the binary messages of a
//!   WebSocket with subprotocol `SPDY/3.1+portforward.k8s.io` ([`ws_bytes`] turns such a
//!   WebSocket into the byte stream [`crate::spdy`] serves).

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Method, header};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{Message, protocol::Role};

use crate::Client;
use crate::error::{Error, Result};

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const ERROR: u8 = 3;
pub const RESIZE: u8 = 4;
/// v5: `[CLOSE, channel]` closes the client's side of `channel`.
pub const CLOSE: u8 = 255;

/// The exec/attach protocols spoken, preferred first.
pub const EXEC_PROTOCOLS: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io"];
/// The WebSocket port-forward protocols of the channel kind.
pub const PORT_FORWARD_PROTOCOLS: &[&str] = &["v4.channel.k8s.io", "portforward.k8s.io"];
/// kubectl's SPDY-over-WebSocket port-forward.
pub const SPDY_PORT_FORWARD: &str = "SPDY/3.1+portforward.k8s.io";
/// The SPDY protocol of port-forward (`X-Stream-Protocol-Version` of a raw SPDY upgrade).
pub const PORT_FORWARD_V1: &str = "portforward.k8s.io";

/// Biggest data payload per message.
const CHUNK: usize = 32 * 1024;

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.trim().as_bytes())
}

fn header_has(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|p| p.trim().eq_ignore_ascii_case(token)))
    })
}

/// Whether a request asks to upgrade to WebSocket.
pub fn is_websocket(headers: &HeaderMap) -> bool {
    header_has(headers, header::UPGRADE, "websocket")
        && header_has(headers, header::CONNECTION, "upgrade")
}

/// Whether a request asks for a raw SPDY/3.1 upgrade.
pub fn is_spdy(headers: &HeaderMap) -> bool {
    header_has(headers, header::UPGRADE, "SPDY/3.1")
        && header_has(headers, header::CONNECTION, "upgrade")
}

/// The subprotocols a client offers, in its order.
pub fn offered_protocols(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(',').map(|p| p.trim().to_owned()))
        .filter(|p| !p.is_empty())
        .collect()
}

/// The first of `supported` (our preference order) the client offers.
pub fn choose(headers: &HeaderMap, supported: &[&'static str]) -> Option<&'static str> {
    let offered = offered_protocols(headers);
    supported
        .iter()
        .copied()
        .find(|p| offered.iter().any(|o| o == p))
}

/// The headers of a `101 Switching Protocols` answer to a WebSocket request with `key`.
pub fn switching_headers(key: &str, protocol: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(protocol) {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, v);
    }
    if let Ok(v) = HeaderValue::from_str(&accept_key(key)) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    h
}

/// A close with status 1000: Go's WebSocket reader reports a close without a status (1005)
/// as an error, and kubectl prints it.
pub fn normal_close() -> Message {
    Message::Close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
        reason: "".into(),
    }))
}

/// One channel message.
pub fn channel_message(channel: u8, data: &[u8]) -> Message {
    let mut p = Vec::with_capacity(data.len() + 1);
    p.push(channel);
    p.extend_from_slice(data);
    Message::Binary(p.into())
}

/// A WebSocket as a plain byte stream: binary (and text) messages in, binary messages out;
/// a close or error ends it. Used for SPDY tunnelled over WebSocket.
pub fn ws_bytes<S>(ws: WebSocketStream<S>) -> DuplexStream
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mine, theirs) = tokio::io::duplex(256 * 1024);
    let (mut rd, mut wr) = tokio::io::split(mine);
    let (mut sink, mut source) = ws.split();
    tokio::spawn(async move {
        let inbound = async {
            while let Some(Ok(m)) = source.next().await {
                let data = match m {
                    Message::Binary(b) => b,
                    Message::Text(t) => Bytes::from(t.as_str().as_bytes().to_vec()),
                    Message::Close(_) => break,
                    _ => continue,
                };
                if wr.write_all(&data).await.is_err() {
                    break;
                }
            }
            let _ = wr.shutdown().await;
        };
        let outbound = async {
            let mut buf = vec![0u8; CHUNK];
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if sink
                            .send(Message::Binary(Bytes::copy_from_slice(&buf[..n])))
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                }
            }
            let _ = sink.send(normal_close()).await;
        };
        // Either direction ending ends the tunnel (SPDY has its own GOAWAY/FIN).
        tokio::select! {
            _ = inbound => {}
            _ = outbound => {}
        }
    });
    theirs
}

/// The exit code a finished exec's error-channel Status stands for: 0 for Success, the
/// `ExitCode` cause of a `NonZeroExitCode`; any other failure is an error with its message.
pub fn exit_code(status: &Value) -> std::result::Result<i32, String> {
    if status["status"] == "Success" {
        return Ok(0);
    }
    if status["reason"] == "NonZeroExitCode"
        && let Some(code) = status["details"]["causes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["reason"] == "ExitCode")
            .and_then(|c| c["message"].as_str()?.parse::<i32>().ok())
    {
        return Ok(code);
    }
    Err(status["message"]
        .as_str()
        .unwrap_or("the command failed")
        .to_owned())
}

/// The client end of a channel-protocol WebSocket.
pub struct Channels {
    ws: WebSocketStream<reqwest::Upgraded>,
    /// The subprotocol the server chose.
    pub protocol: String,
}

impl std::fmt::Debug for Channels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channels")
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}

impl Channels {
    /// Splits into a sender and a receiver that can be used from two tasks.
    pub fn split(self) -> (ChannelSender, ChannelReceiver) {
        let v5 = self.protocol.starts_with("v5.");
        let (sink, source) = self.ws.split();
        (ChannelSender { sink, v5 }, ChannelReceiver { source })
    }
}

/// Sends on channels.
pub struct ChannelSender {
    sink: futures::stream::SplitSink<WebSocketStream<reqwest::Upgraded>, Message>,
    v5: bool,
}

impl std::fmt::Debug for ChannelSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelSender").finish_non_exhaustive()
    }
}

fn ws_err(e: impl std::fmt::Display) -> Error {
    Error::Stream(e.to_string())
}

impl ChannelSender {
    /// Sends `data` on `channel`, in chunks.
    pub async fn send(&mut self, channel: u8, data: &[u8]) -> Result<()> {
        for c in data.chunks(CHUNK) {
            self.sink
                .send(channel_message(channel, c))
                .await
                .map_err(ws_err)?;
        }
        Ok(())
    }

    /// Tells the server stdin ended (v5's close signal; v4 has none, the caller then
    /// closes the connection once output is done).
    pub async fn close_stdin(&mut self) -> Result<()> {
        if self.v5 {
            self.sink
                .send(Message::Binary(vec![CLOSE, STDIN].into()))
                .await
                .map_err(ws_err)?;
        }
        Ok(())
    }

    /// Sends a terminal size.
    pub async fn resize(&mut self, width: u16, height: u16) -> Result<()> {
        let body = serde_json::json!({"Width": width, "Height": height}).to_string();
        self.send(RESIZE, body.as_bytes()).await
    }

    /// Closes the WebSocket.
    pub async fn close(&mut self) -> Result<()> {
        self.sink.send(normal_close()).await.map_err(ws_err)?;
        self.sink.close().await.map_err(ws_err)
    }
}

/// Receives channel messages.
pub struct ChannelReceiver {
    source: futures::stream::SplitStream<WebSocketStream<reqwest::Upgraded>>,
}

impl std::fmt::Debug for ChannelReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelReceiver").finish_non_exhaustive()
    }
}

impl ChannelReceiver {
    /// The next message as (channel, data); `None` when the server closed the stream.
    pub async fn recv(&mut self) -> Result<Option<(u8, Bytes)>> {
        loop {
            let m = match self.source.next().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(ws_err(e)),
                Some(Ok(m)) => m,
            };
            let data = match m {
                Message::Binary(b) => b,
                Message::Text(t) => Bytes::from(t.as_str().as_bytes().to_vec()),
                Message::Close(_) => return Ok(None),
                _ => continue,
            };
            if data.is_empty() {
                continue;
            }
            return Ok(Some((data[0], data.slice(1..))));
        }
    }
}

impl Client {
    /// Upgrades `GET path` to a WebSocket offering `protocols`, with this client's credentials
    /// (the apiserver's exec, attach and portforward subresources).
    pub async fn channels(&self, path: &str, protocols: &[&str]) -> Result<Channels> {
        let key = {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>())
        };
        let resp = self
            .request(Method::GET, path)
            .header(header::CONNECTION, "Upgrade")
            .header(header::UPGRADE, "websocket")
            .header(header::SEC_WEBSOCKET_VERSION, "13")
            .header(header::SEC_WEBSOCKET_KEY, &key)
            .header(header::SEC_WEBSOCKET_PROTOCOL, protocols.join(", "))
            .send()
            .await
            .map_err(|e| Error::Stream(format!("{path}: {e}")))?;
        let status = resp.status();
        if status != http::StatusCode::SWITCHING_PROTOCOLS {
            let body = resp.bytes().await.unwrap_or_default();
            return Err(Error::Api(crate::client::status_from(
                status.as_u16(),
                &body,
            )));
        }
        let want = accept_key(&key);
        let got = resp
            .headers()
            .get(header::SEC_WEBSOCKET_ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if got != want {
            return Err(Error::Stream(format!(
                "{path}: the server answered a wrong Sec-WebSocket-Accept"
            )));
        }
        let protocol = resp
            .headers()
            .get(header::SEC_WEBSOCKET_PROTOCOL)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        if !protocols.contains(&protocol.as_str()) {
            return Err(Error::Stream(format!(
                "{path}: the server chose subprotocol {protocol:?}, not one of {protocols:?}"
            )));
        }
        let io = resp
            .upgrade()
            .await
            .map_err(|e| Error::Stream(format!("{path}: upgrade: {e}")))?;
        let ws = WebSocketStream::from_raw_socket(io, Role::Client, None).await;
        Ok(Channels { ws, protocol })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc6455() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn protocol_choice_follows_our_preference() {
        let mut h = HeaderMap::new();
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("v4.channel.k8s.io, v5.channel.k8s.io, channel.k8s.io"),
        );
        assert_eq!(choose(&h, EXEC_PROTOCOLS), Some("v5.channel.k8s.io"));
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("base64.channel.k8s.io"),
        );
        assert_eq!(choose(&h, EXEC_PROTOCOLS), None);
    }

    #[test]
    fn exit_codes_from_statuses() {
        let ok = serde_json::json!({"metadata": {}, "status": "Success"});
        assert_eq!(exit_code(&ok), Ok(0));
        let three = serde_json::json!({"status": "Failure", "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": "3"}]}});
        assert_eq!(exit_code(&three), Ok(3));
        let err = serde_json::json!({"status": "Failure", "message": "no such file"});
        assert_eq!(exit_code(&err), Err("no such file".to_owned()));
    }

    #[tokio::test]
    async fn ws_bytes_carries_a_byte_stream_both_ways() {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let server = WebSocketStream::from_raw_socket(a, Role::Server, None).await;
        let mut client = WebSocketStream::from_raw_socket(b, Role::Client, None).await;
        let mut bytes = ws_bytes(server);
        client
            .send(Message::Binary(Bytes::from_static(b"hello ")))
            .await
            .expect("send");
        client
            .send(Message::Binary(Bytes::from_static(b"world")))
            .await
            .expect("send");
        let mut got = [0u8; 11];
        bytes.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"hello world");
        bytes.write_all(b"back").await.expect("write");
        let m = client.next().await.expect("message").expect("ok");
        assert_eq!(m.into_data().as_ref(), b"back");
        client.close(None).await.expect("close");
        let mut rest = Vec::new();
        bytes.read_to_end(&mut rest).await.expect("eof");
        assert!(rest.is_empty());
    }
}
