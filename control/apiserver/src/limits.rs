//! Request body limits where the connection is served: a body declared larger than
//! [`MAX_BODY`] is refused with 413 before it is read, and the unread rest of any body (a
//! refused chunked upload, a body a handler had no use for) is read and discarded, within
//! bounds, so that a client still writing it receives the answer instead of a reset
//! connection. Closing with unread bytes in the socket makes the kernel send a reset, which
//! can destroy the response before the client reads it.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use xkube_api::StatusError;

pub use crate::http::MAX_BODY;

/// Bytes of an unread body read and discarded after the answer before the connection is
/// closed: a client that writes its whole body before it reads (most do) gets the 413 of a
/// body up to this size past the limit.
pub const DRAIN_LIMIT: u64 = 128 * 1024 * 1024;

/// How long the unread rest of a body is read before the connection is closed.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Whether the request declares (`Content-Length`) a body over [`MAX_BODY`].
pub fn declared_too_large(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|n| n > MAX_BODY as u64)
}

/// Whether the client waits for `100 Continue` before it sends the body.
pub fn expects_continue(headers: &HeaderMap) -> bool {
    headers
        .get(header::EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
}

/// Kubernetes' 413: `Request entity too large: limit is 3145728`.
pub fn too_large_response() -> Response {
    status_response(&StatusError::too_large(MAX_BODY))
}

/// A `Status` answer given where connections are served, before or around routing.
pub fn status_response(e: &StatusError) -> Response {
    let body = serde_json::to_vec(&e.to_value()).unwrap_or_default();
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// Reads and discards the rest of `body` in the background, up to [`DRAIN_LIMIT`] bytes and
/// [`DRAIN_TIMEOUT`]; dropping the body then closes the connection.
pub fn drain(body: Incoming) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    rt.spawn(async move {
        let mut body = body;
        let mut seen: u64 = 0;
        let read = async {
            while let Some(Ok(frame)) = body.frame().await {
                if let Some(d) = frame.data_ref() {
                    seen += d.len() as u64;
                    if seen > DRAIN_LIMIT {
                        return false;
                    }
                }
            }
            true
        };
        match tokio::time::timeout(DRAIN_TIMEOUT, read).await {
            Ok(true) => {}
            Ok(false) => tracing::debug!("unread request body over the drain limit; closing"),
            Err(_) => tracing::debug!("unread request body still arriving; closing"),
        }
    });
}

/// A request body that drains what its reader left unread when dropped (see [`drain`]).
pub struct Draining {
    inner: Option<Incoming>,
    ended: bool,
}

impl Draining {
    /// Wraps a connection's request body.
    pub fn new(inner: Incoming) -> Self {
        Draining {
            inner: Some(inner),
            ended: false,
        }
    }
}

impl hyper::body::Body for Draining {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let r = Pin::new(inner).poll_frame(cx);
        if matches!(r, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.ended = true;
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}

impl Drop for Draining {
    fn drop(&mut self) {
        if let Some(body) = self.inner.take()
            && !self.ended
            && !body.is_end_stream()
        {
            drain(body);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_lengths_over_the_limit_are_refused() {
        let mut h = HeaderMap::new();
        assert!(!declared_too_large(&h));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(MAX_BODY));
        assert!(!declared_too_large(&h));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(MAX_BODY + 1));
        assert!(declared_too_large(&h));
        h.insert(header::EXPECT, HeaderValue::from_static("100-Continue"));
        assert!(expects_continue(&h));
    }

    #[tokio::test]
    async fn the_answer_is_kubernetes_413() {
        let r = too_large_response();
        assert_eq!(r.status(), 413);
        let body = r.into_body().collect().await.expect("body").to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["reason"], "RequestEntityTooLarge");
        assert_eq!(v["message"], "Request entity too large: limit is 3145728");
        assert_eq!(v["code"], 413);
    }
}
