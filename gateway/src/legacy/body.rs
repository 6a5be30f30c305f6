//! A streamed request body that can be taken back while nobody has read it.
//!
//! The proxy never buffers a whole body, yet a try that fails to connect
//! must be replayable on a second connection. hyper drops the request of a
//! failed try, body included; [`Handoff`] leaves the real body in a shared
//! slot until hyper polls it for the first time, so after a connect error
//! the proxy finds it still there and sends it again. Once polled, bytes may
//! have left and the body is gone for good: no replay.

use axum::body::Body;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

/// The body each try owns; see the module docs.
pub struct Handoff {
    slot: Arc<Mutex<Option<Body>>>,
    taken: Option<Body>,
    /// Known before any try, so hyper can frame the message without taking it.
    hint: SizeHint,
    end_stream: bool,
}

/// The caller's side of a [`Handoff`]: hands out one per try.
pub struct Replay {
    slot: Arc<Mutex<Option<Body>>>,
    hint: SizeHint,
    end_stream: bool,
}

impl Replay {
    pub fn new(body: Body) -> Self {
        let hint = http_body::Body::size_hint(&body);
        let end_stream = http_body::Body::is_end_stream(&body);
        Self {
            slot: Arc::new(Mutex::new(Some(body))),
            hint,
            end_stream,
        }
    }

    /// The body for the next try, or `None` when an earlier try started
    /// reading it. An empty body can always be sent again.
    pub fn next_try(&self) -> Option<Handoff> {
        let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.is_none() {
            if !self.end_stream {
                return None;
            }
            *slot = Some(Body::empty());
        }
        Some(Handoff {
            slot: self.slot.clone(),
            taken: None,
            hint: self.hint,
            end_stream: self.end_stream,
        })
    }
}

impl http_body::Body for Handoff {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        if this.taken.is_none() {
            this.taken = this
                .slot
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
        }
        match &mut this.taken {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.taken {
            Some(body) => body.is_end_stream(),
            None => self.end_stream,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.taken {
            Some(body) => body.size_hint(),
            None => self.hint,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn an_unread_body_is_replayed_a_read_one_is_not() {
        let replay = Replay::new(Body::from("hello"));
        let first = replay.next_try().unwrap();
        assert_eq!(first.size_hint().exact(), Some(5));
        drop(first);
        let second = replay.next_try().unwrap();
        assert_eq!(second.collect().await.unwrap().to_bytes(), "hello");
        assert!(replay.next_try().is_none());
    }

    #[tokio::test]
    async fn an_empty_body_is_always_replayable() {
        let replay = Replay::new(Body::empty());
        let first = replay.next_try().unwrap();
        assert!(first.is_end_stream());
        assert!(first.collect().await.unwrap().to_bytes().is_empty());
        assert!(replay.next_try().is_some());
    }
}
