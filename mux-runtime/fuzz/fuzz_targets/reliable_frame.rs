//! The reliable layer's state machine driven by arbitrary bytes: two
//! machines on a link the fuzzer controls (deliver, drop, duplicate, time,
//! sends, resets, closes) plus forged frames and arbitrary MsgPack values
//! injected into either side. Must never panic, never exceed its window,
//! and, as long as nothing was forged and no established link was reset by
//! hand, deliver each side's messages at most once and in order.
#![no_main]

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use mux_runtime::msgpack::{self, Limits};
use mux_runtime::reliable::{Config, Event, Frame, LinkState, Machine};
use mux_runtime::Value;

/// Frames waiting on one wire; older ones fall off (a full UART buffer).
const WIRE_CAP: usize = 64;

struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn take(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }
}

struct Side {
    machine: Machine,
    /// Frames this side sent, not yet delivered to the other.
    wire: VecDeque<Vec<u8>>,
    next_msg: i128,
    /// Highest message number the other side sent that this side received.
    last_delivered: Option<i128>,
}

impl Side {
    fn new(config: Config) -> Option<Side> {
        Some(Side {
            machine: Machine::new(config).ok()?,
            wire: VecDeque::new(),
            next_msg: 0,
            last_delivered: None,
        })
    }

    fn drain(&mut self, forged: bool) {
        let m = &self.machine;
        assert!(m.in_flight() <= m.max_in_flight(), "window exceeded");
        while let Some(f) = self.machine.poll_transmit() {
            if self.wire.len() == WIRE_CAP {
                self.wire.pop_front();
            }
            self.wire.push_back(msgpack::to_vec(&f.to_value()));
        }
        while let Some(ev) = self.machine.poll_event() {
            if let Event::Message(v) = ev {
                let n = v.as_int();
                if !forged {
                    let n = n.expect("only numbers are sent");
                    // Resets may lose messages, never repeat or reorder them.
                    assert!(
                        self.last_delivered.is_none_or(|last| n > last),
                        "message {n} delivered after {:?}",
                        self.last_delivered
                    );
                    self.last_delivered = Some(n);
                }
            }
        }
    }
}

fn config(b: &mut Bytes) -> Config {
    Config {
        window: 4 + u16::from(b.byte().unwrap_or(4) % 13),
        timeout_ms: 1 + u64::from(b.byte().unwrap_or(100)) * 10,
        retries: u32::from(b.byte().unwrap_or(5) % 8),
    }
}

fn forged_frame(b: &mut Bytes) -> Frame {
    let s = u16::from(b.byte().unwrap_or(0));
    let r = u16::from(b.byte().unwrap_or(0));
    let nx = usize::from(b.byte().unwrap_or(0) % 5);
    let x = b.take(nx).iter().map(|&q| u16::from(q)).collect();
    let d = b.byte().filter(|v| v % 2 == 0).map(Value::from);
    Frame::Data { s, r, x, d }
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes(data);
    let (Some(a), Some(z)) = (Side::new(config(&mut b)), Side::new(config(&mut b))) else {
        return;
    };
    let mut sides = [a, z];
    let limits = Limits {
        max_bytes: 256,
        max_items: 32,
        max_depth: 8,
    };
    let start = Instant::now();
    let mut now = start;
    // Set once the order check no longer applies (forged frames, resets).
    let mut forged = false;
    sides[0].machine.connect(now);
    sides[0].drain(forged);
    while let Some(op) = b.byte() {
        let me = usize::from(op >> 7);
        let other = 1 - me;
        match op & 0x0f {
            // Deliver the next frame from `other` to `me`.
            0..=4 => {
                if let Some(bytes) = sides[other].wire.pop_front() {
                    let v = msgpack::decode_exact(&bytes, &limits).expect("own frames decode");
                    sides[me].machine.handle_value(&v, now);
                }
            }
            5 => {
                sides[other].wire.pop_front();
            }
            6 => {
                if let Some(f) = sides[other].wire.front().cloned() {
                    sides[other].wire.push_front(f);
                }
            }
            7 | 8 => {
                now += Duration::from_millis(u64::from(b.byte().unwrap_or(0)) * 8);
                for s in &mut sides {
                    s.machine.handle_timeout(now);
                }
            }
            9 | 10 => {
                let n = sides[me].next_msg;
                sides[me].next_msg += 1;
                let _ = sides[me].machine.send(Value::Int(n), now);
            }
            // The fuzzer holds frames on the wire as long as it likes, and
            // the handshake can only tell late frames by time (see
            // reliable/mod.rs): after a reconnect, order is not checked.
            11 => {
                forged |= sides[me].machine.state() != LinkState::Idle;
                sides[me].machine.connect(now);
            }
            12 => {
                forged = true;
                sides[me].machine.close("fuzz");
            }
            13 => {
                forged = true;
                let f = forged_frame(&mut b);
                sides[me].machine.handle_frame(f, now);
            }
            _ => {
                forged = true;
                let n = usize::from(b.byte().unwrap_or(0));
                let raw = b.take(n);
                if let Ok(Some((v, _))) = msgpack::decode(raw, &limits) {
                    sides[me].machine.handle_value(&v, now);
                }
            }
        }
        for s in &mut sides {
            s.drain(forged);
        }
        // The machine must always know its next deadline, and it must not
        // lie in the past after handling timeouts.
        for s in &mut sides {
            if let Some(t) = s.machine.poll_timeout() {
                assert!(t >= start);
            }
        }
    }
});
