//! The reliable layer as a sans-I/O state machine.
//!
//! Feed it received frames ([`Machine::handle_frame`], [`Machine::handle_value`])
//! and the passing of time ([`Machine::handle_timeout`] at
//! [`Machine::poll_timeout`]); take out frames to transmit
//! ([`Machine::poll_transmit`]) and events ([`Machine::poll_event`]):
//! delivered messages and link state changes. No clock, no I/O, no tasks:
//! the async wrapper in `link.rs` and the simulations in the tests drive it.
//! See `mod.rs` for the protocol semantics it implements.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use super::frame::{ConnId, Frame, Params, ResetStep, WireSeq};
use super::sim::Rng;
use crate::value::Value;

/// Smallest window (sequence modulus) the protocol allows.
pub const MIN_WINDOW: u16 = 4;
/// Largest window we offer; bounds the buffers and the `x` list.
pub const MAX_WINDOW: u16 = 128;
/// Largest timeout accepted from a peer (one hour), so deadlines stay sane.
pub const MAX_TIMEOUT_MS: u64 = 3_600_000;
/// Connection ids of the peer's earlier handshakes we remember, besides
/// the current one: a request carrying one of them is an echo.
const OLD_PEER_IDS: usize = 4;

/// What this side offers in the reset handshake, plus its retry budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Sequence number modulus; fewer than `window / 2` messages are in flight.
    pub window: u16,
    /// Retransmit timeout in milliseconds.
    pub timeout_ms: u64,
    /// Retransmissions of one frame before the link is declared down.
    pub retries: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            window: 8,
            timeout_ms: 1000,
            retries: 5,
        }
    }
}

/// A [`Config`] value outside what the protocol allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigError {
    Window(u16),
    Timeout(u64),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Window(w) => write!(
                f,
                "reliable link window {w} is invalid: use {MIN_WINDOW}..={MAX_WINDOW} (default 8)"
            ),
            ConfigError::Timeout(t) => write!(
                f,
                "reliable link timeout {t} ms is invalid: use 1..={MAX_TIMEOUT_MS} ms (default 1000)"
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(MIN_WINDOW..=MAX_WINDOW).contains(&self.window) {
            return Err(ConfigError::Window(self.window));
        }
        if !(1..=MAX_TIMEOUT_MS).contains(&self.timeout_ms) {
            return Err(ConfigError::Timeout(self.timeout_ms));
        }
        Ok(())
    }

    fn params(&self) -> Params {
        Params {
            timeout_ms: self.timeout_ms,
            window: u64::from(self.window),
        }
    }
}

/// The link state as the user sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// Not started: answers a peer's reset request but sends nothing itself.
    Idle,
    /// Reset handshake in progress.
    Connecting,
    /// Messages flow.
    Up,
    /// Given up or closed; like `Idle`, but sending is refused.
    Down,
}

/// What the machine tells its user.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// The handshake completed with these agreed parameters.
    Up { timeout_ms: u64, window: u16 },
    /// The next message from the peer, in order, exactly once.
    Message(Value),
    /// The link restarted (the peer or we sent a reset request while up).
    /// `lost` messages we had queued or in flight were discarded: they may
    /// or may not have arrived, so requests waiting on the peer must fail.
    Reset { lost: usize },
    /// The link is down: retries exhausted, handshake failed, or closed.
    Down { reason: String, lost: usize },
}

/// Sending is refused because the link is down; call `connect` first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkDown;

impl fmt::Display for LinkDown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("reliable link is down: reconnect before sending")
    }
}

impl std::error::Error for LinkDown {}

/// Counters for logs and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub frames_sent: u64,
    pub frames_received: u64,
    /// Frames that did not decode or broke the protocol; ignored.
    pub bad_frames: u64,
    /// Data frames sent again after the timeout.
    pub retransmits: u64,
    /// Data frames sent again because the peer's `x` showed a hole.
    pub fast_retransmits: u64,
    /// Data frames received again (already delivered or buffered).
    pub duplicates: u64,
    /// Acks ignored because they did not fit what was in flight.
    pub stale_acks: u64,
    pub messages_sent: u64,
    pub messages_delivered: u64,
    /// Messages refused by `send` while down.
    pub refused: u64,
}

#[derive(Clone, Copy, Debug)]
enum Phase {
    Idle,
    /// We sent `n: 1` `tries` times; the next try is due at `next_at`.
    Requesting {
        tries: u32,
        next_at: Instant,
    },
    /// We answered with `n: 2`; waiting for `n: 3`.
    Accepting {
        tries: u32,
        next_at: Instant,
    },
    Up,
    Down,
}

/// A message sent but not yet cumulatively acknowledged.
#[derive(Debug)]
struct Outgoing {
    msg: Value,
    /// Transmission counter values of the first and the latest transmission,
    /// to tell which holes reported via `x` were really lost.
    first_tx: u64,
    last_tx: u64,
    sent_at: Instant,
    /// Transmissions so far (1 + retransmissions).
    tries: u32,
    /// The peer reported it in `x`: received, not yet deliverable.
    sacked: bool,
}

/// One side of a reliable link. Both peers run the same machine.
#[derive(Debug)]
pub struct Machine {
    config: Config,
    phase: Phase,
    /// Parameters agreed in the last handshake (valid from `Accepting` on).
    timeout: Duration,
    window: u64,
    /// Messages accepted by `send` but not yet given a sequence number.
    queue: VecDeque<Value>,
    /// In flight, oldest first: entry `i` has sequence number `send_base + i`.
    in_flight: VecDeque<Outgoing>,
    /// Sequence numbers are absolute counters here, reduced mod `window` on
    /// the wire only.
    send_base: u64,
    recv_next: u64,
    /// Received ahead of `recv_next`, waiting for the gap to fill.
    ahead: BTreeMap<u64, Value>,
    tx_counter: u64,
    ack_pending: bool,
    out: VecDeque<Frame>,
    events: VecDeque<Event>,
    stats: Stats,
    /// Our connection id in the current (or last) handshake.
    id: ConnId,
    /// The peer's connection id in the current (or last) handshake; `None`
    /// before any, or for a peer that sends none.
    peer_id: Option<ConnId>,
    /// The handshake with `peer_id` completed (its requests are echoes now).
    peer_was_up: bool,
    /// The peer's ids of earlier handshakes, newest last.
    old_peer_ids: VecDeque<ConnId>,
    /// Where our connection ids come from.
    ids: Rng,
}

impl Machine {
    /// A new, idle machine. Fails when `config` is outside the protocol's range.
    /// Its connection ids are random (seeded from the OS).
    pub fn new(config: Config) -> Result<Machine, ConfigError> {
        Self::with_id_seed(config, random_seed())
    }

    /// [`Machine::new`] with connection ids drawn from `seed`: for
    /// reproducible simulations. Two peers need different seeds.
    pub fn with_id_seed(config: Config, seed: u64) -> Result<Machine, ConfigError> {
        config.validate()?;
        let mut ids = Rng::new(seed);
        Ok(Machine {
            id: draw_id(&mut ids),
            peer_id: None,
            peer_was_up: false,
            old_peer_ids: VecDeque::new(),
            ids,
            config,
            phase: Phase::Idle,
            timeout: Duration::from_millis(config.timeout_ms),
            window: u64::from(config.window),
            queue: VecDeque::new(),
            in_flight: VecDeque::new(),
            send_base: 0,
            recv_next: 0,
            ahead: BTreeMap::new(),
            tx_counter: 0,
            ack_pending: false,
            out: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn state(&self) -> LinkState {
        match self.phase {
            Phase::Idle => LinkState::Idle,
            Phase::Requesting { .. } | Phase::Accepting { .. } => LinkState::Connecting,
            Phase::Up => LinkState::Up,
            Phase::Down => LinkState::Down,
        }
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Messages sent and not yet cumulatively acknowledged.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Messages waiting for room in the window (or for the link to come up).
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Most messages we keep in flight at once: `(window - 1) / 2`, one less
    /// than the protocol's cap of `window / 2` for even windows. The slack
    /// lets a frame be overtaken by one newer frame (or arrive twice) without
    /// being mistaken for a new one; see `mod.rs`.
    pub fn max_in_flight(&self) -> usize {
        ((self.window - 1) / 2) as usize
    }

    /// Our connection id in the current (or last) handshake, and the
    /// peer's (`None` before any, or from a peer that sends none).
    pub fn connection_ids(&self) -> (ConnId, Option<ConnId>) {
        (self.id, self.peer_id)
    }

    /// Starts (or restarts) the reset handshake, under a new connection id.
    ///
    /// While up this is a local reset: what is pending is discarded and
    /// reported as [`Event::Reset`].
    pub fn connect(&mut self, now: Instant) {
        match self.phase {
            Phase::Requesting { .. } | Phase::Accepting { .. } => return,
            Phase::Up => {
                let lost = self.flush();
                self.events.push_back(Event::Reset { lost });
                // The closing frame is for a peer without connection ids,
                // which cannot tell our new request from an echo of the
                // old one; one with ids sees the new id and resets anyway.
                self.push(Frame::Close {
                    reason: "link reset".to_owned(),
                    peer: self.peer_id,
                });
            }
            Phase::Idle | Phase::Down => {}
        }
        self.id = draw_id(&mut self.ids);
        self.send_reset(ResetStep::Request);
        self.phase = Phase::Requesting {
            tries: 1,
            next_at: now + Duration::from_millis(self.config.timeout_ms),
        };
    }

    /// Tells the peer we close (`n: 0`), discards what is pending, goes down.
    pub fn close(&mut self, reason: &str) {
        if matches!(self.phase, Phase::Down) {
            return;
        }
        self.push(Frame::Close {
            reason: reason.to_owned(),
            peer: self.known_peer(),
        });
        self.go_down(format!("closed locally: {reason}"));
    }

    /// Queues a message; it goes out as soon as the link is up and the
    /// window has room. Refused only while down.
    pub fn send(&mut self, msg: Value, now: Instant) -> Result<(), LinkDown> {
        if matches!(self.phase, Phase::Down) {
            self.stats.refused += 1;
            return Err(LinkDown);
        }
        self.queue.push_back(msg);
        self.pump(now);
        Ok(())
    }

    /// Feeds a received payload map. Maps that are not frames are counted
    /// in [`Stats::bad_frames`] and otherwise ignored.
    pub fn handle_value(&mut self, v: &Value, now: Instant) {
        match Frame::from_value(v) {
            Ok(f) => self.handle_frame(f, now),
            Err(e) => {
                self.stats.frames_received += 1;
                self.stats.bad_frames += 1;
                tracing::debug!("reliable: dropping frame: {e}");
            }
        }
    }

    /// Counts a frame the transport received but could not read (bad CRC,
    /// undecodable payload). It is simply lost; retransmission recovers.
    pub fn count_bad_frame(&mut self) {
        self.stats.frames_received += 1;
        self.stats.bad_frames += 1;
    }

    /// Feeds a received frame.
    pub fn handle_frame(&mut self, frame: Frame, now: Instant) {
        self.stats.frames_received += 1;
        match frame {
            Frame::Reset {
                step,
                params,
                id,
                peer,
            } => self.on_reset(step, params, id, peer, now),
            Frame::Close { reason, peer } => self.on_close(&reason, peer),
            Frame::Data { s, r, x, d } => self.on_data(s, r, x, d, now),
        }
    }

    /// When [`Machine::handle_timeout`] must next be called, if at all.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Requesting { next_at, .. } | Phase::Accepting { next_at, .. } => Some(next_at),
            Phase::Up => self
                .in_flight
                .iter()
                .filter(|o| !o.sacked)
                .map(|o| o.sent_at + self.timeout)
                .min(),
            Phase::Idle | Phase::Down => None,
        }
    }

    /// Retransmits what timed out; declares the link down when retries are
    /// exhausted. Calling it early or often is harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.phase {
            Phase::Requesting { tries, next_at } if now >= next_at => {
                if tries > self.config.retries {
                    self.go_down(format!(
                        "peer did not answer {tries} reset requests (is it running and on this port?)"
                    ));
                } else {
                    self.send_reset(ResetStep::Request);
                    self.phase = Phase::Requesting {
                        tries: tries + 1,
                        next_at: now + Duration::from_millis(self.config.timeout_ms),
                    };
                }
            }
            Phase::Accepting { tries, next_at } if now >= next_at => {
                if tries > self.config.retries {
                    self.go_down(format!(
                        "peer did not confirm the reset after {tries} answers"
                    ));
                } else {
                    self.send_reset(ResetStep::Ack);
                    self.phase = Phase::Accepting {
                        tries: tries + 1,
                        next_at: now + self.timeout,
                    };
                }
            }
            Phase::Up => self.retransmit_due(now),
            _ => {}
        }
    }

    /// The next frame to put on the wire.
    pub fn poll_transmit(&mut self) -> Option<Frame> {
        self.out.pop_front()
    }

    /// The next event for the user.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    // ---- handshake ----

    fn on_reset(
        &mut self,
        step: ResetStep,
        params: Params,
        id: Option<ConnId>,
        peer: Option<ConnId>,
        now: Instant,
    ) {
        match step {
            ResetStep::Request => self.on_request(params, id, now),
            // An ack naming another of our ids answers an earlier request
            // of ours (before a local reset): stale.
            _ if peer.is_some_and(|p| p != self.id) => {}
            ResetStep::Ack => self.on_ack(params, id, now),
            ResetStep::Ack2 => {
                if !matches!(self.phase, Phase::Accepting { .. }) || !self.is_current_peer(id) {
                    return; // late or stray
                }
                let Some((timeout, window)) = self.agree(params, id) else {
                    return;
                };
                self.timeout = timeout;
                self.window = window;
                self.come_up(now);
            }
        }
    }

    fn on_request(&mut self, params: Params, id: Option<ConnId>, now: Instant) {
        let echo = id.is_some_and(|i| {
            self.peer_was_up && self.peer_id == Some(i) || self.old_peer_ids.contains(&i)
        });
        if let Phase::Accepting { tries, next_at } = self.phase {
            if id == self.peer_id {
                // Our ack got lost or is still on its way: answer again.
                self.send_reset(ResetStep::Ack);
                self.phase = Phase::Accepting { tries, next_at };
                return;
            }
        }
        if echo {
            // A duplicate or late copy of a request we answered already
            // (this peer's current one or an earlier one): never a restart,
            // which comes with a new id.
            return;
        }
        let Some((timeout, window)) = self.agree(params, id) else {
            return;
        };
        match self.phase {
            Phase::Up => {
                // A new id: the peer restarted (or a new peer took over
                // the line). Everything of the old connection is void.
                let lost = self.flush();
                self.events.push_back(Event::Reset { lost });
                self.id = draw_id(&mut self.ids);
            }
            // Both sides requested at once: keep our id, which the peer's
            // answer to our own request names.
            Phase::Requesting { .. } => {}
            Phase::Idle | Phase::Down | Phase::Accepting { .. } => {
                self.id = draw_id(&mut self.ids);
            }
        }
        self.adopt_peer(id);
        self.accept(timeout, window, now);
    }

    fn on_ack(&mut self, params: Params, id: Option<ConnId>, now: Instant) {
        match self.phase {
            Phase::Requesting { .. } | Phase::Accepting { .. } => {
                // Accepting gets an ack when both sides requested at once;
                // it must come from the peer whose request we accepted.
                if matches!(self.phase, Phase::Accepting { .. }) && !self.is_current_peer(id) {
                    return;
                }
                let Some((timeout, window)) = self.agree(params, id) else {
                    return;
                };
                self.adopt_peer(id);
                self.timeout = timeout;
                self.window = window;
                self.send_reset(ResetStep::Ack2);
                self.come_up(now);
            }
            Phase::Up if self.is_current_peer(id) => {
                // Our ack2 got lost; the peer waits for it.
                self.send_reset(ResetStep::Ack2);
            }
            _ => {}
        }
    }

    /// Whether a handshake frame with sender id `id` comes from the peer of
    /// the current handshake (true when either side has no ids to compare).
    fn is_current_peer(&self, id: Option<ConnId>) -> bool {
        match (id, self.peer_id) {
            (Some(i), Some(p)) => i == p,
            _ => true,
        }
    }

    /// Makes `id` the current peer's, remembering the one before.
    fn adopt_peer(&mut self, id: Option<ConnId>) {
        if self.peer_id == id {
            return;
        }
        if let Some(old) = self.peer_id {
            if self.old_peer_ids.len() == OLD_PEER_IDS {
                self.old_peer_ids.pop_front();
            }
            self.old_peer_ids.push_back(old);
        }
        self.peer_id = id;
        self.peer_was_up = false;
    }

    /// The peer's id while a handshake with it is under way or done.
    fn known_peer(&self) -> Option<ConnId> {
        match self.phase {
            Phase::Accepting { .. } | Phase::Up => self.peer_id,
            _ => None,
        }
    }

    /// The agreed (timeout, window), or `None` after refusing bad parameters
    /// (with a closing frame to the sender, whose id is `from`).
    fn agree(&mut self, peer: Params, from: Option<ConnId>) -> Option<(Duration, u64)> {
        let reason = if peer.window < u64::from(MIN_WINDOW) {
            format!(
                "reset refused: window {} is below the minimum {MIN_WINDOW}",
                peer.window
            )
        } else if !(1..=MAX_TIMEOUT_MS).contains(&peer.timeout_ms) {
            format!(
                "reset refused: timeout {} ms is outside 1..={MAX_TIMEOUT_MS}",
                peer.timeout_ms
            )
        } else {
            let t = peer.timeout_ms.max(self.config.timeout_ms);
            let m = peer.window.min(u64::from(self.config.window));
            return Some((Duration::from_millis(t), m));
        };
        self.stats.bad_frames += 1;
        self.push(Frame::Close { reason, peer: from });
        None
    }

    fn accept(&mut self, timeout: Duration, window: u64, now: Instant) {
        self.timeout = timeout;
        self.window = window;
        self.send_reset(ResetStep::Ack);
        self.phase = Phase::Accepting {
            tries: 1,
            next_at: now + timeout,
        };
    }

    fn come_up(&mut self, now: Instant) {
        self.send_base = 0;
        self.recv_next = 0;
        self.in_flight.clear();
        self.ahead.clear();
        self.ack_pending = false;
        self.phase = Phase::Up;
        self.peer_was_up = true;
        self.events.push_back(Event::Up {
            timeout_ms: self.timeout.as_millis() as u64,
            window: self.window as u16,
        });
        self.pump(now);
    }

    fn on_close(&mut self, reason: &str, peer: Option<ConnId>) {
        if matches!(self.phase, Phase::Idle | Phase::Down) {
            return;
        }
        if peer.is_some_and(|p| p != self.id) {
            // It closes an earlier connection of ours: stale.
            return;
        }
        self.go_down(format!("peer closed the link: {reason}"));
    }

    fn go_down(&mut self, reason: String) {
        let lost = self.flush();
        self.phase = Phase::Down;
        tracing::debug!("reliable: link down: {reason}");
        self.events.push_back(Event::Down { reason, lost });
    }

    /// Discards everything pending; returns how many of our messages went.
    fn flush(&mut self) -> usize {
        let lost = self.in_flight.len() + self.queue.len();
        self.in_flight.clear();
        self.queue.clear();
        self.ahead.clear();
        self.ack_pending = false;
        lost
    }

    fn send_reset(&mut self, step: ResetStep) {
        let peer = match step {
            ResetStep::Request => None,
            ResetStep::Ack | ResetStep::Ack2 => self.peer_id,
        };
        self.push(Frame::Reset {
            step,
            params: self.config.params(),
            id: Some(self.id),
            peer,
        });
    }

    // ---- data ----

    fn wire(&self, seq: u64) -> WireSeq {
        (seq % self.window) as WireSeq
    }

    /// Distance from `base` forward to the wire number `q`, modulo the window.
    fn ahead_of(&self, q: WireSeq, base: u64) -> u64 {
        (u64::from(q) + self.window - base % self.window) % self.window
    }

    fn on_data(&mut self, s: WireSeq, r: WireSeq, x: Vec<WireSeq>, d: Option<Value>, now: Instant) {
        // Before the handshake completes, data belongs to an old epoch (or
        // the peer has not heard our reset yet): the peer retransmits it.
        if !matches!(self.phase, Phase::Up) {
            return;
        }
        let w = self.window;
        if u64::from(s) >= w || u64::from(r) >= w || x.iter().any(|&q| u64::from(q) >= w) {
            self.stats.bad_frames += 1;
            return;
        }
        self.take_ack(r, &x, now);
        if let Some(msg) = d {
            self.take_message(s, msg);
            self.ack_pending = true;
        }
        self.pump(now);
        if self.ack_pending {
            self.ack_pending = false;
            let frame = Frame::ack(
                self.wire(self.next_seq()),
                self.wire(self.recv_next),
                self.x(),
            );
            self.push(frame);
        }
    }

    fn next_seq(&self) -> u64 {
        self.send_base + self.in_flight.len() as u64
    }

    /// Applies the peer's `r` and `x`. An ack that does not fit what is in
    /// flight is stale (a reordered or duplicated old frame) and ignored
    /// whole: trusting any part of it could drop a message.
    fn take_ack(&mut self, r: WireSeq, x: &[WireSeq], now: Instant) {
        let flying = self.in_flight.len() as u64;
        let acked = self.ahead_of(r, self.send_base);
        let fits = acked <= flying
            && x.iter().all(|&q| {
                let k = self.ahead_of(q, self.send_base);
                k > acked && k < flying
            });
        if !fits {
            self.stats.stale_acks += 1;
            return;
        }
        self.in_flight.drain(..acked as usize);
        self.send_base += acked;
        let mut top: Option<usize> = None;
        for &q in x {
            let k = (self.ahead_of(q, self.send_base)) as usize;
            self.in_flight[k].sacked = true;
            top = Some(top.map_or(k, |t| t.max(k)));
        }
        // A hole below a received frame whose last transmission went out
        // before that frame's first one was lost (the link keeps order):
        // send it again now instead of waiting for the timer.
        if let Some(top) = top {
            let newest_first_tx = self.in_flight[top].first_tx;
            for k in 0..top {
                let o = &self.in_flight[k];
                if !o.sacked && o.last_tx < newest_first_tx && o.tries <= self.config.retries {
                    self.stats.fast_retransmits += 1;
                    self.transmit(k, now);
                }
            }
        }
    }

    fn take_message(&mut self, s: WireSeq, msg: Value) {
        // Accept the protocol's full `window / 2` ahead: a peer may use it.
        let k = self.ahead_of(s, self.recv_next);
        if k >= self.window / 2 {
            // Behind recv_next: delivered already; our ack was lost.
            self.stats.duplicates += 1;
            return;
        }
        if k > 0 {
            if self.ahead.insert(self.recv_next + k, msg).is_some() {
                self.stats.duplicates += 1;
            }
            return;
        }
        self.deliver(msg);
        while let Some(next) = self.ahead.remove(&self.recv_next) {
            self.deliver(next);
        }
    }

    fn deliver(&mut self, msg: Value) {
        self.recv_next += 1;
        self.stats.messages_delivered += 1;
        self.events.push_back(Event::Message(msg));
    }

    /// Out-of-order sequence numbers received, ascending.
    fn x(&self) -> Vec<WireSeq> {
        self.ahead.keys().map(|&q| self.wire(q)).collect()
    }

    /// Sends queued messages while the window has room.
    fn pump(&mut self, now: Instant) {
        if !matches!(self.phase, Phase::Up) {
            return;
        }
        while self.in_flight.len() < self.max_in_flight() {
            let Some(msg) = self.queue.pop_front() else {
                break;
            };
            self.in_flight.push_back(Outgoing {
                msg,
                first_tx: self.tx_counter,
                last_tx: self.tx_counter,
                sent_at: now,
                tries: 0,
                sacked: false,
            });
            self.stats.messages_sent += 1;
            self.transmit(self.in_flight.len() - 1, now);
        }
    }

    fn transmit(&mut self, k: usize, now: Instant) {
        let seq = self.wire(self.send_base + k as u64);
        let r = self.wire(self.recv_next);
        let x = self.x();
        let tx = self.tx_counter;
        self.tx_counter += 1;
        let o = &mut self.in_flight[k];
        o.last_tx = tx;
        o.sent_at = now;
        o.tries += 1;
        let frame = Frame::Data {
            s: seq,
            r,
            x,
            d: Some(o.msg.clone()),
        };
        // Every data frame carries the current ack.
        self.ack_pending = false;
        self.push(frame);
    }

    fn retransmit_due(&mut self, now: Instant) {
        for k in 0..self.in_flight.len() {
            let o = &self.in_flight[k];
            if o.sacked || now < o.sent_at + self.timeout {
                continue;
            }
            if o.tries > self.config.retries {
                let reason = format!(
                    "no acknowledgement after {} transmissions of one message (link too lossy, or the peer is gone)",
                    o.tries
                );
                self.push(Frame::Close {
                    reason: reason.clone(),
                    peer: self.peer_id,
                });
                self.go_down(reason);
                return;
            }
            self.stats.retransmits += 1;
            self.transmit(k, now);
        }
    }

    fn push(&mut self, frame: Frame) {
        self.stats.frames_sent += 1;
        self.out.push_back(frame);
    }
}

/// A fresh connection id below 2^30 (a small int on MicroPython too).
fn draw_id(ids: &mut Rng) -> ConnId {
    (ids.next_u64() >> 34) as ConnId
}

/// A seed that differs between machines and processes: std's per-process
/// random hash keys (from the OS; each `RandomState` gets new ones) mixed
/// with the time.
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(t.as_nanos());
    }
    h.finish()
}
