//! The sans-I/O bookkeeping of one protocol peer: which of our requests are
//! waiting for answers, and which of the peer's requests we are serving.
//!
//! No I/O and no tasks: the [`Endpoint`](super::Endpoint) feeds received
//! (already bit-flipped) messages in and acts on what comes out.

use std::collections::HashMap;

use crate::error::RemoteError;
use crate::message::Message;
use crate::seq::{Seq, SeqAllocator};
use crate::value::Value;

/// What an answer to one of our requests says.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The result of a plain request (final).
    Reply(Value),
    /// Stream item number `n` (not final).
    Item { n: u64, data: Value },
    /// The stream ended normally (final).
    End,
    /// The request failed (final).
    Failed(RemoteError),
}

impl Outcome {
    /// Whether the exchange is over after this outcome.
    pub fn is_final(&self) -> bool {
        !matches!(self, Outcome::Item { .. })
    }
}

/// One of our requests that has not been answered completely.
#[derive(Debug)]
struct Open<W> {
    waiter: W,
    streaming: bool,
}

/// Our open requests by (even) sequence number, each with whoever waits
/// for its answer (`W`: a oneshot sender, a stream slot, a test probe).
#[derive(Debug)]
pub struct RequestTable<W> {
    seqs: SeqAllocator,
    open: HashMap<Seq, Open<W>>,
}

impl<W> Default for RequestTable<W> {
    fn default() -> Self {
        RequestTable::new()
    }
}

/// Where an answer went.
#[derive(Debug)]
pub enum Delivery<'a, W> {
    /// The exchange is over; the table no longer holds the waiter.
    Final(W, Outcome),
    /// A stream item; the waiter stays.
    Ongoing(&'a W, Outcome),
    /// No request of ours has this number (late answer after a
    /// cancellation, or a confused peer): drop it.
    Unknown,
}

impl<W> RequestTable<W> {
    pub fn new() -> RequestTable<W> {
        RequestTable {
            seqs: SeqAllocator::new(),
            open: HashMap::new(),
        }
    }

    /// Opens a request; returns its even sequence number, or hands the
    /// waiter back when all 2^30 numbers are in use.
    pub fn open(&mut self, waiter: W, streaming: bool) -> Result<Seq, W> {
        match self.seqs.alloc() {
            Some(seq) => {
                self.open.insert(seq, Open { waiter, streaming });
                Ok(seq)
            }
            None => Err(waiter),
        }
    }

    /// Routes an answer (`i` already flipped back to our even number).
    /// Requests and cancellations are not answers: `Unknown`.
    pub fn answer(&mut self, msg: Message) -> Delivery<'_, W> {
        let (seq, outcome) = match msg {
            Message::Reply { seq, data } => (seq, Outcome::Reply(data)),
            Message::StreamItem { seq, n, data } => (seq, Outcome::Item { n, data }),
            Message::StreamEnd { seq } => (seq, Outcome::End),
            Message::Error { seq, error } => (seq, Outcome::Failed(error)),
            _ => return Delivery::Unknown,
        };
        let streaming = match self.open.get(&seq) {
            Some(open) => open.streaming,
            None => return Delivery::Unknown,
        };
        // A stream item for a plain call is a confused peer; take the value
        // as the reply rather than leave the caller hanging.
        let outcome = match outcome {
            Outcome::Item { data, .. } if !streaming => Outcome::Reply(data),
            other => other,
        };
        if outcome.is_final() {
            let open = self.open.remove(&seq).expect("checked above");
            self.seqs.release(seq);
            Delivery::Final(open.waiter, outcome)
        } else {
            Delivery::Ongoing(&self.open[&seq].waiter, outcome)
        }
    }

    /// Our side gave up on `seq`: forget it. `Some` means it was still open,
    /// so a cancellation `{i: seq}` must go to the peer.
    pub fn cancel(&mut self, seq: Seq) -> Option<W> {
        let open = self.open.remove(&seq)?;
        self.seqs.release(seq);
        Some(open.waiter)
    }

    /// The link is gone: every open request, to be failed with `_LnkErr`.
    pub fn drain(&mut self) -> Vec<W> {
        let drained: Vec<W> = self
            .open
            .drain()
            .map(|(seq, open)| {
                self.seqs.release(seq);
                open.waiter
            })
            .collect();
        drained
    }

    pub fn is_open(&self, seq: Seq) -> bool {
        self.open.contains_key(&seq)
    }

    /// How many of our requests are waiting.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }
}

/// The peer's requests we are serving, by their (flipped, odd) number.
#[derive(Debug)]
pub struct ServingTable<H> {
    serving: HashMap<Seq, H>,
}

impl<H> Default for ServingTable<H> {
    fn default() -> Self {
        ServingTable {
            serving: HashMap::new(),
        }
    }
}

impl<H> ServingTable<H> {
    /// Starts serving `seq`; hands `handle` back if that number is already
    /// being served (the new request gets `_DupErr`, the old one runs on).
    pub fn start(&mut self, seq: Seq, handle: H) -> Result<(), H> {
        if self.serving.contains_key(&seq) {
            return Err(handle);
        }
        self.serving.insert(seq, handle);
        Ok(())
    }

    /// Whether `seq` is still being served: a task checks this before
    /// sending, so nothing goes out after a cancellation.
    pub fn is_serving(&self, seq: Seq) -> bool {
        self.serving.contains_key(&seq)
    }

    /// The request is done (answered or cancelled); its handle if it was
    /// still being served.
    pub fn finish(&mut self, seq: Seq) -> Option<H> {
        self.serving.remove(&seq)
    }

    /// The link is gone: every handle, to be aborted.
    pub fn drain(&mut self) -> Vec<H> {
        self.serving.drain().map(|(_, h)| h).collect()
    }

    pub fn len(&self) -> usize {
        self.serving.len()
    }

    pub fn is_empty(&self) -> bool {
        self.serving.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::WellKnown;

    #[test]
    fn open_requests_get_even_numbers_and_replies_close_them() {
        let mut t = RequestTable::new();
        let a = t.open("a", false).unwrap();
        let b = t.open("b", false).unwrap();
        assert_eq!((a, b), (2, 4));
        match t.answer(Message::reply(b, "yes".into())) {
            Delivery::Final(w, Outcome::Reply(v)) => {
                assert_eq!(w, "b");
                assert_eq!(v, Value::from("yes"));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(t.is_open(a) && !t.is_open(b));
    }

    #[test]
    fn stream_items_keep_the_request_open_until_the_end() {
        let mut t = RequestTable::new();
        let s = t.open("s", true).unwrap();
        assert!(matches!(
            t.answer(Message::stream_item(s, 1, 7.into())),
            Delivery::Ongoing(&"s", Outcome::Item { n: 1, .. })
        ));
        assert!(t.is_open(s));
        assert!(matches!(
            t.answer(Message::stream_end(s)),
            Delivery::Final("s", Outcome::End)
        ));
        assert!(t.is_empty());
    }

    #[test]
    fn errors_end_calls_and_streams() {
        let mut t = RequestTable::new();
        let s = t.open((), true).unwrap();
        let err = RemoteError::well_known(WellKnown::Key, vec!["k".into()]);
        match t.answer(Message::error(s, err.clone())) {
            Delivery::Final((), Outcome::Failed(e)) => assert_eq!(e, err),
            other => panic!("unexpected {other:?}"),
        }
        assert!(t.is_empty());
    }

    #[test]
    fn answers_to_unknown_or_cancelled_requests_are_dropped() {
        let mut t = RequestTable::new();
        let s = t.open((), true).unwrap();
        assert!(t.cancel(s).is_some());
        assert!(t.cancel(s).is_none(), "a second cancel sends nothing");
        assert!(matches!(
            t.answer(Message::stream_item(s, 2, 1.into())),
            Delivery::Unknown
        ));
        assert!(matches!(
            t.answer(Message::reply(40, 1.into())),
            Delivery::Unknown
        ));
    }

    #[test]
    fn a_stream_item_for_a_plain_call_counts_as_its_reply() {
        let mut t = RequestTable::new();
        let c = t.open((), false).unwrap();
        assert!(matches!(
            t.answer(Message::stream_item(c, 1, 5.into())),
            Delivery::Final((), Outcome::Reply(Value::Int(5)))
        ));
    }

    #[test]
    fn drain_hands_back_every_waiter_and_frees_the_numbers() {
        let mut t = RequestTable::new();
        for w in 0..5 {
            t.open(w, w % 2 == 0).unwrap();
        }
        let mut drained = t.drain();
        drained.sort();
        assert_eq!(drained, vec![0, 1, 2, 3, 4]);
        assert!(t.is_empty());
        assert_eq!(t.open(9, false).unwrap(), 12, "numbers keep counting up");
    }

    #[test]
    fn duplicate_serving_numbers_are_refused_and_the_original_kept() {
        let mut s = ServingTable::default();
        assert!(s.start(3, "first").is_ok());
        assert_eq!(s.start(3, "second"), Err("second"));
        assert!(s.is_serving(3));
        assert_eq!(s.finish(3), Some("first"));
        assert!(!s.is_serving(3));
        assert_eq!(s.finish(3), None);
    }
}
