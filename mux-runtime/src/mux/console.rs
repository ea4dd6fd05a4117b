//! Console capture: the last bytes each node printed, in a ring buffer.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::Notify;

/// The last `cap` console bytes of a node, and how many came in total
/// (an offset readers use to ask for what is new).
#[derive(Debug)]
pub struct Ring {
    buf: VecDeque<u8>,
    cap: usize,
    total: u64,
}

impl Ring {
    pub fn new(cap: usize) -> Ring {
        Ring {
            buf: VecDeque::with_capacity(cap.min(4096)),
            cap: cap.max(1),
            total: 0,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.total += bytes.len() as u64;
        let bytes = &bytes[bytes.len().saturating_sub(self.cap)..];
        let overflow = (self.buf.len() + bytes.len()).saturating_sub(self.cap);
        self.buf.drain(..overflow);
        self.buf.extend(bytes);
    }

    /// Bytes received in total (the offset just past the newest byte).
    pub fn total(&self) -> u64 {
        self.total
    }

    /// What is held from `offset` on, and the offset after it. An offset
    /// older than what is held yields everything held.
    pub fn since(&self, offset: u64) -> (Vec<u8>, u64) {
        let start = self.total - self.buf.len() as u64;
        let skip = offset.saturating_sub(start).min(self.buf.len() as u64) as usize;
        (self.buf.iter().skip(skip).copied().collect(), self.total)
    }
}

/// A node's console ring plus a wake-up for streaming readers.
#[derive(Debug)]
pub struct Capture {
    ring: Mutex<Ring>,
    pub(super) changed: Notify,
}

impl Capture {
    pub fn new(cap: usize) -> Capture {
        Capture {
            ring: Mutex::new(Ring::new(cap)),
            changed: Notify::new(),
        }
    }

    pub fn push(&self, bytes: &[u8]) {
        self.ring
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(bytes);
        self.changed.notify_waiters();
    }

    pub fn since(&self, offset: u64) -> (Vec<u8>, u64) {
        self.ring
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .since(offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_bytes_up_to_its_capacity() {
        let mut r = Ring::new(8);
        r.push(b"hello ");
        r.push(b"world");
        assert_eq!(r.since(0), (b"lo world".to_vec(), 11));
        r.push(b"0123456789abc");
        assert_eq!(r.since(0), (b"56789abc".to_vec(), 24));
    }

    #[test]
    fn readers_get_only_what_is_new_since_their_offset() {
        let mut r = Ring::new(64);
        r.push(b"abc");
        let (first, at) = r.since(0);
        assert_eq!(first, b"abc");
        r.push(b"def");
        assert_eq!(r.since(at), (b"def".to_vec(), 6));
        assert_eq!(r.since(6), (Vec::new(), 6));
    }
}
