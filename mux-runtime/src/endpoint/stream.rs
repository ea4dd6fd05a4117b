//! The receiving end of a stream request.
//!
//! Items land in a small per-stream [`Slot`] that never blocks the link's
//! read loop: when the consumer falls behind, the oldest values are dropped
//! (docs/protocol.md: Encoding, streams: a slow consumer gets the latest value; items may be
//! coalesced, never reordered).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::task::AtomicWaker;
use futures::Stream;

use super::Endpoint;
use crate::error::RemoteError;
use crate::seq::Seq;
use crate::value::Value;

/// Values a consumer may fall behind before old ones are coalesced away.
const SLOT_DEPTH: usize = 32;

#[derive(Default)]
struct Queue {
    items: VecDeque<Result<Value, RemoteError>>,
    ended: bool,
    /// Values dropped because the consumer was slow.
    coalesced: u64,
}

/// Where the read loop puts a stream's items.
#[derive(Default)]
pub(super) struct Slot {
    queue: Mutex<Queue>,
    waker: AtomicWaker,
}

impl Slot {
    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn push(&self, item: Result<Value, RemoteError>) {
        let mut q = self.queue();
        if q.ended {
            return;
        }
        if q.items.len() >= SLOT_DEPTH {
            // Errors end the stream, so the oldest entry is always a value.
            q.items.pop_front();
            q.coalesced += 1;
        }
        q.items.push_back(item);
        drop(q);
        self.waker.wake();
    }

    pub(super) fn end(&self) {
        self.queue().ended = true;
        self.waker.wake();
    }
}

/// The values of a stream request ([`Endpoint::stream`]), in order; an
/// error is the last item. Dropping it cancels the stream on the peer.
pub struct ReplyStream {
    endpoint: Endpoint,
    /// `None` once the stream ended (nothing left to cancel).
    seq: Option<Seq>,
    slot: Arc<Slot>,
}

impl ReplyStream {
    pub(super) fn new(endpoint: Endpoint, seq: Seq, slot: Arc<Slot>) -> ReplyStream {
        ReplyStream {
            endpoint,
            seq: Some(seq),
            slot,
        }
    }

    /// A stream that failed to open; its slot already holds the error.
    pub(super) fn finished(endpoint: Endpoint, slot: Arc<Slot>) -> ReplyStream {
        ReplyStream {
            endpoint,
            seq: None,
            slot,
        }
    }

    /// Our sequence number for this stream (while it is open).
    pub fn seq(&self) -> Option<Seq> {
        self.seq
    }

    /// How many values were dropped because this consumer was slow.
    pub fn coalesced(&self) -> u64 {
        self.slot.queue().coalesced
    }
}

impl Stream for ReplyStream {
    type Item = Result<Value, RemoteError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        for attempt in 0..2 {
            let mut q = this.slot.queue();
            if let Some(item) = q.items.pop_front() {
                return Poll::Ready(Some(item));
            }
            if q.ended {
                drop(q);
                this.seq = None;
                return Poll::Ready(None);
            }
            drop(q);
            if attempt == 0 {
                // Register, then look again: an item may have landed between.
                this.slot.waker.register(cx.waker());
            }
        }
        Poll::Pending
    }
}

impl Drop for ReplyStream {
    fn drop(&mut self) {
        if let Some(seq) = self.seq.take() {
            self.endpoint.cancel(seq);
        }
    }
}
