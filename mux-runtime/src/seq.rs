//! Sequence numbers (docs/protocol.md: Encoding, sequence numbers).
//!
//! The side that opens an exchange picks an even `i`; the answer carries
//! `i + 1`. On receipt a peer flips bit 0 of every `i` ([`flip`]), so its
//! own open requests and the peer's requests never share a number.

use std::collections::HashSet;

/// A message's sequence number (`i`).
pub type Seq = u32;

/// Allocated numbers stay below this; the allocator wraps back to 2.
pub const SEQ_LIMIT: Seq = 1 << 31;

/// Flips bit 0: how a received `i` is mapped into the local tables.
pub fn flip(seq: Seq) -> Seq {
    seq ^ 1
}

/// Hands out even sequence numbers 2, 4, 6, … skipping those still open.
///
/// Sans-I/O: the caller releases a number once its exchange is complete
/// (reply, error, stream end or cancellation).
#[derive(Debug)]
pub struct SeqAllocator {
    next: Seq,
    open: HashSet<Seq>,
}

/// How many even numbers exist in `2..SEQ_LIMIT`.
const CAPACITY: usize = (SEQ_LIMIT as usize - 2) / 2;

impl Default for SeqAllocator {
    fn default() -> Self {
        SeqAllocator::new()
    }
}

impl SeqAllocator {
    pub fn new() -> SeqAllocator {
        SeqAllocator::starting_at(2)
    }

    /// An allocator whose first candidate is `first` (rounded up to even,
    /// wrapped into range). For tests and for resuming after a reconnect.
    pub fn starting_at(first: Seq) -> SeqAllocator {
        SeqAllocator {
            next: Self::normalise(first),
            open: HashSet::new(),
        }
    }

    fn normalise(n: Seq) -> Seq {
        let even = n.saturating_add(n & 1);
        if (2..SEQ_LIMIT).contains(&even) {
            even
        } else {
            2
        }
    }

    /// The next free even number, now open; `None` only when every one of
    /// the 2^30 - 1 numbers is open (the caller has leaked releases).
    pub fn alloc(&mut self) -> Option<Seq> {
        if self.open.len() >= CAPACITY {
            return None;
        }
        // Terminates: fewer than CAPACITY numbers are open.
        loop {
            let candidate = self.next;
            self.next = Self::normalise(candidate + 2);
            if self.open.insert(candidate) {
                return Some(candidate);
            }
        }
    }

    /// Marks `seq` free again; false if it was not open.
    pub fn release(&mut self, seq: Seq) -> bool {
        self.open.remove(&seq)
    }

    pub fn is_open(&self, seq: Seq) -> bool {
        self.open.contains(&seq)
    }

    /// How many numbers are currently open.
    pub fn open_count(&self) -> usize {
        self.open.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_at_two_and_counts_up_in_evens() {
        let mut a = SeqAllocator::new();
        assert_eq!(
            [a.alloc(), a.alloc(), a.alloc()],
            [Some(2), Some(4), Some(6)]
        );
        assert_eq!(a.open_count(), 3);
    }

    #[test]
    fn released_numbers_are_not_reused_before_wrapping() {
        let mut a = SeqAllocator::new();
        let two = a.alloc().unwrap();
        assert!(a.release(two));
        assert!(!a.release(two), "double release reports false");
        assert_eq!(a.alloc(), Some(4));
    }

    #[test]
    fn wraps_to_two_below_two_to_the_31() {
        let mut a = SeqAllocator::starting_at(SEQ_LIMIT - 4);
        assert_eq!(a.alloc(), Some(SEQ_LIMIT - 4));
        assert_eq!(a.alloc(), Some(SEQ_LIMIT - 2));
        assert_eq!(a.alloc(), Some(2));
    }

    #[test]
    fn skips_numbers_still_open_after_wrapping() {
        let mut a = SeqAllocator::new();
        let (two, four, six) = (a.alloc().unwrap(), a.alloc().unwrap(), a.alloc().unwrap());
        a.release(four);
        a.next = SEQ_LIMIT - 2;
        assert_eq!(a.alloc(), Some(SEQ_LIMIT - 2));
        // 2 is still open, 4 was released, 6 is still open.
        assert_eq!(a.alloc(), Some(4));
        assert_eq!(a.alloc(), Some(8));
        assert!(a.is_open(two) && a.is_open(six));
    }

    #[test]
    fn odd_or_out_of_range_start_is_normalised() {
        assert_eq!(SeqAllocator::starting_at(7).alloc(), Some(8));
        assert_eq!(SeqAllocator::starting_at(0).alloc(), Some(2));
        assert_eq!(SeqAllocator::starting_at(SEQ_LIMIT - 1).alloc(), Some(2));
        assert_eq!(SeqAllocator::starting_at(u32::MAX).alloc(), Some(2));
    }

    #[test]
    fn flip_maps_requests_and_answers_onto_each_other() {
        assert_eq!(flip(2), 3);
        assert_eq!(flip(3), 2);
        assert_eq!(flip(flip(70000)), 70000);
    }
}
