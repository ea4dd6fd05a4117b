//! A deterministic simulated lossy link between two [`Machine`]s, driven by
//! a simulated clock: for tests, property tests, fuzzing and benchmarks.
//!
//! Frames travel as MsgPack bytes through two FIFO wires with a fixed
//! latency. Faults, each drawn per frame from a seeded generator: loss,
//! corruption (dropped, as SerialPacker's CRC would), duplication (the copy
//! right behind the original) and reordering (a frame overtakes the one
//! before it; a frame is overtaken at most once, see `mod.rs` on why
//! bounded reordering is all that sequence numbers modulo the window allow).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::frame::Frame;
use super::machine::{Event, Machine};
use crate::msgpack::{self, Limits};
use crate::value::Value;

/// Per-frame fault probabilities, each in 0.0..=1.0.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Faults {
    pub loss: f64,
    pub corrupt: f64,
    pub duplicate: f64,
    pub reorder: f64,
}

/// splitmix64: tiny, seedable, good enough for fault injection.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

#[derive(Debug)]
struct OnWire {
    at: Instant,
    bytes: Vec<u8>,
    overtaken: bool,
}

/// What happened on the wires, for assertions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WireStats {
    pub sent: u64,
    pub lost: u64,
    pub corrupted: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub delivered: u64,
}

/// Two machines, two wires, one clock.
#[derive(Debug)]
pub struct Sim {
    pub now: Instant,
    pub peers: [Machine; 2],
    /// Messages delivered at each peer, in delivery order.
    pub delivered: [Vec<Value>; 2],
    /// Every other event at each peer, in order.
    pub events: [Vec<Event>; 2],
    /// Every frame each peer transmitted, with the time, when `record` is on.
    pub sent: [Vec<(Instant, Frame)>; 2],
    pub record: bool,
    pub wire_stats: WireStats,
    /// Largest number of messages one peer had in flight at any time.
    pub max_in_flight_seen: usize,
    wires: [VecDeque<OnWire>; 2],
    latency: Duration,
    faults: Faults,
    rng: Rng,
}

impl Sim {
    pub fn new(a: Machine, b: Machine, latency: Duration, faults: Faults, seed: u64) -> Sim {
        Sim {
            now: Instant::now(),
            peers: [a, b],
            delivered: [Vec::new(), Vec::new()],
            events: [Vec::new(), Vec::new()],
            sent: [Vec::new(), Vec::new()],
            record: false,
            wire_stats: WireStats::default(),
            max_in_flight_seen: 0,
            wires: [VecDeque::new(), VecDeque::new()],
            latency,
            faults,
            rng: Rng::new(seed),
        }
    }

    pub fn set_faults(&mut self, faults: Faults) {
        self.faults = faults;
    }

    pub fn connect(&mut self, peer: usize) {
        self.peers[peer].connect(self.now);
        self.drain(peer);
    }

    /// Sends a message from `peer`; `false` when the machine refused it.
    pub fn send(&mut self, peer: usize, msg: Value) -> bool {
        let ok = self.peers[peer].send(msg, self.now).is_ok();
        self.drain(peer);
        ok
    }

    pub fn close(&mut self, peer: usize, reason: &str) {
        self.peers[peer].close(reason);
        self.drain(peer);
    }

    /// When the next thing happens, if anything is scheduled.
    pub fn next_at(&self) -> Option<Instant> {
        let wires = self.wires.iter().filter_map(|w| w.front().map(|f| f.at));
        let timers = self.peers.iter().filter_map(|m| m.poll_timeout());
        wires.chain(timers).min()
    }

    /// Advances the clock to the next scheduled thing, but not past
    /// `limit`, and handles everything due. `false` when nothing is due
    /// before `limit`.
    pub fn step(&mut self, limit: Instant) -> bool {
        let Some(at) = self.next_at() else {
            return false;
        };
        if at > limit {
            return false;
        }
        self.now = self.now.max(at);
        for from in 0..2 {
            let to = 1 - from;
            while self.wires[from].front().is_some_and(|f| f.at <= self.now) {
                let f = self.wires[from].pop_front().expect("front exists");
                self.wire_stats.delivered += 1;
                match msgpack::decode_exact(&f.bytes, &Limits::default()) {
                    Ok(v) => self.peers[to].handle_value(&v, self.now),
                    Err(e) => panic!("sim wire carried undecodable bytes: {e}"),
                }
                self.drain(to);
            }
        }
        for p in 0..2 {
            if self.peers[p].poll_timeout().is_some_and(|t| t <= self.now) {
                self.peers[p].handle_timeout(self.now);
                self.drain(p);
            }
        }
        true
    }

    /// Runs for `d` of simulated time.
    pub fn run_for(&mut self, d: Duration) {
        let limit = self.now + d;
        while self.step(limit) {}
        self.now = self.now.max(limit);
    }

    /// Runs until nothing is scheduled (all acknowledged, timers idle) or
    /// `d` of simulated time has passed. `true` when it went quiet.
    pub fn run_until_quiet(&mut self, d: Duration) -> bool {
        let limit = self.now + d;
        while self.step(limit) {}
        self.next_at().is_none()
    }

    /// Moves frames and events out of `peer` onto the wire and the logs.
    fn drain(&mut self, peer: usize) {
        let flying = self.peers[peer].in_flight();
        self.max_in_flight_seen = self.max_in_flight_seen.max(flying);
        while let Some(ev) = self.peers[peer].poll_event() {
            match ev {
                Event::Message(v) => self.delivered[peer].push(v),
                other => self.events[peer].push(other),
            }
        }
        while let Some(frame) = self.peers[peer].poll_transmit() {
            let bytes = msgpack::to_vec(&frame.to_value());
            if self.record {
                self.sent[peer].push((self.now, frame));
            }
            self.put_on_wire(peer, bytes);
        }
    }

    fn put_on_wire(&mut self, from: usize, bytes: Vec<u8>) {
        self.wire_stats.sent += 1;
        if self.rng.chance(self.faults.loss) {
            self.wire_stats.lost += 1;
            return;
        }
        if self.rng.chance(self.faults.corrupt) {
            self.wire_stats.corrupted += 1;
            return;
        }
        let copies = if self.rng.chance(self.faults.duplicate) {
            self.wire_stats.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let wire = &mut self.wires[from];
            let at = wire.back().map_or(self.now + self.latency, |b| {
                b.at.max(self.now + self.latency)
            });
            let reorder = self.rng.chance(self.faults.reorder);
            match wire.back_mut() {
                Some(prev) if reorder && !prev.overtaken => {
                    // Overtake the previous frame: it takes our slot.
                    let prev_at = prev.at;
                    prev.at = at;
                    prev.overtaken = true;
                    let idx = wire.len() - 1;
                    wire.insert(
                        idx,
                        OnWire {
                            at: prev_at,
                            bytes: bytes.clone(),
                            overtaken: false,
                        },
                    );
                    self.wire_stats.reordered += 1;
                }
                _ => wire.push_back(OnWire {
                    at,
                    bytes: bytes.clone(),
                    overtaken: false,
                }),
            }
        }
    }
}
