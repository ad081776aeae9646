//! The client's request body on its way upstream: what the pool sends and `forward` checks.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use crate::http::body::RequestBody;

/// The client's request body on its way upstream: ends in an error past the target's
/// `max_body`, which [`send`](super::send) answers with 413 `body_too_large`, and marks its own read errors
/// (a malformed chunked encoding, a client gone mid-upload) as the client's, which [`send`](super::send)
/// answers with 400 `invalid_body` instead of blaming the upstream.
pub struct Upload {
    pub(super) body: RequestBody,
    /// Bytes still allowed.
    pub(super) left: u64,
    /// Counts the bytes of a body of unknown length, for the access log and metrics.
    pub(super) counted: Option<Arc<AtomicU64>>,
}

/// The error an [`Upload`] ends with past `max_body`.
#[derive(Debug)]
pub struct TooLarge;

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request body larger than the target's max_body")
    }
}

impl std::error::Error for TooLarge {}

/// The error an [`Upload`] ends with when reading the client's body failed.
#[derive(Debug)]
pub struct ClientBody(hyper::Error);

impl std::fmt::Display for ClientBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "reading the request body: {}", self.0)
    }
}

impl std::error::Error for ClientBody {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

impl Body for Upload {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = ready!(Pin::new(&mut this.body).poll_frame(cx));
        if let Some(Ok(frame)) = &polled
            && let Some(data) = frame.data_ref()
        {
            let n = data.len() as u64;
            if n > this.left {
                this.left = 0;
                return Poll::Ready(Some(Err(Box::new(TooLarge))));
            }
            this.left -= n;
            if let Some(c) = &this.counted {
                c.fetch_add(n, Ordering::Relaxed);
            }
        }
        Poll::Ready(polled.map(|r| r.map_err(|e| Box::new(ClientBody(e)) as Self::Error)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
