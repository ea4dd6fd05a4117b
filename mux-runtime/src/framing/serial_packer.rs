//! SerialPacker frames: the framing of lossy serial (UART) links.
//!
//! `START(1) LEN(1 or 2) DATA(LEN) CRC16(2, high byte first)`; bytes
//! between frames are console output. LEN is one byte when `max_packet` is
//! at most 255, else `len < 128: [len]`, otherwise
//! `[(len & 0x7F) | 0x80, len >> 7]`; LEN = 0 is invalid. The CRC
//! ([`super::crc16`]) covers DATA only.
//!
//! Two levels: [`FrameCodec`] moves raw payloads (the reliable layer puts
//! its own maps in them) and [`SerialPackerCodec`] moves message maps.
//!
//! Time: the parser drops a partial frame once `idle` passes without a
//! byte, so a lost byte costs one frame, not the link. A `Decoder` has no
//! clock, so the codecs take one ([`Clock`], `Instant::now` by default;
//! [`ManualClock`] in tests) and read it once per `decode` call, i.e. when
//! bytes arrive. [`FrameCodec::decode_at`] takes the time explicitly.

use bytes::{Buf, Bytes, BytesMut};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::codec::{Decoder, Encoder};

use super::crc16::{crc16, Crc16};
use super::{encode_message, message_limits, FramingError, Incoming};
use crate::msgpack::{self, Limits};
use crate::value::Value;

/// Largest length the two-byte LEN form can carry (7 + 8 bits).
pub const MAX_PACKET_LIMIT: usize = 0x7FFF;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SerialPackerConfig {
    /// Byte that starts every frame.
    pub start: u8,
    /// Largest payload (DATA) in bytes, 1..=32767. Both ends must agree:
    /// it decides whether LEN takes one byte or up to two.
    pub max_packet: usize,
    /// A partial frame is dropped after this long without a byte.
    pub idle: Duration,
}

impl Default for SerialPackerConfig {
    fn default() -> Self {
        SerialPackerConfig {
            start: 0x85,
            max_packet: 127,
            idle: Duration::from_millis(100),
        }
    }
}

impl SerialPackerConfig {
    /// Checks that the configuration can work.
    pub fn validate(&self) -> Result<(), FramingError> {
        if self.max_packet == 0 || self.max_packet > MAX_PACKET_LIMIT {
            return Err(FramingError::Config(format!(
                "max_packet {} is out of range: SerialPacker frames carry 1 to {MAX_PACKET_LIMIT} bytes",
                self.max_packet
            )));
        }
        Ok(())
    }

    fn one_byte_len(&self) -> bool {
        self.max_packet <= 255
    }

    /// The frame carrying `payload`: START, LEN, payload, CRC.
    pub fn encode_frame(&self, payload: &[u8]) -> Result<Vec<u8>, FramingError> {
        let mut out = Vec::with_capacity(payload.len() + 5);
        self.encode_frame_into(payload, &mut out)?;
        Ok(out)
    }

    fn encode_frame_into(&self, payload: &[u8], out: &mut Vec<u8>) -> Result<(), FramingError> {
        let len = payload.len();
        if len == 0 {
            return Err(FramingError::EmptyFrame);
        }
        if len > self.max_packet {
            return Err(FramingError::OutgoingTooLarge {
                len,
                max: self.max_packet,
            });
        }
        out.push(self.start);
        if self.one_byte_len() || len < 128 {
            out.push(len as u8);
        } else {
            out.push((len & 0x7F) as u8 | 0x80);
            out.push((len >> 7) as u8);
        }
        out.extend_from_slice(payload);
        out.extend_from_slice(&crc16(payload).to_be_bytes());
        Ok(())
    }
}

/// Where the codecs get the time from.
pub type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// The real clock.
pub fn system_clock() -> Clock {
    Arc::new(Instant::now)
}

/// A clock that moves only when told to, for tests and simulations.
#[derive(Clone, Debug)]
pub struct ManualClock(Arc<Mutex<Instant>>);

impl ManualClock {
    pub fn new() -> Self {
        ManualClock(Arc::new(Mutex::new(Instant::now())))
    }

    pub fn now(&self) -> Instant {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn advance(&self, by: Duration) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) += by;
    }

    /// A [`Clock`] reading this manual clock.
    pub fn clock(&self) -> Clock {
        let me = self.clone();
        Arc::new(move || me.now())
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock::new()
    }
}

/// What the frame parser passed over or dropped, since it was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SerialCounters {
    /// Frames with a good CRC.
    pub frames: u64,
    /// Bytes yielded as console output.
    pub console_bytes: u64,
    /// Frames dropped for a CRC mismatch.
    pub bad_crc: u64,
    /// Frames announcing more than `max_packet` bytes, dropped.
    pub too_long: u64,
    /// Frames announcing LEN = 0, dropped.
    pub zero_len: u64,
    /// Partial frames dropped because the line went idle.
    pub idle_resets: u64,
    /// Frames whose payload is not a MsgPack map (message level only).
    pub bad_payload: u64,
}

/// What the raw frame decoder yields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RawIncoming {
    /// The payload of a frame with a good CRC.
    Frame(Bytes),
    /// Bytes seen outside frames.
    Console(Bytes),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Between frames: bytes are console output until START.
    Idle,
    /// After START.
    Len,
    /// After the first of two LEN bytes (its low seven bits).
    LenHigh(u8),
    /// Collecting `len` payload bytes.
    Data,
    /// Payload complete, expecting the CRC's high byte.
    CrcHigh,
    /// Expecting the CRC's low byte.
    CrcLow(u8),
}

/// Raw-payload SerialPacker codec: `Decoder<Item = RawIncoming>`,
/// `Encoder<&[u8]>`.
///
/// Corrupt frames never stop the decoder: bad CRC, LEN = 0, LEN over
/// `max_packet` and idle timeouts are counted and the parser waits for the
/// next START (an invalid LEN byte is re-read as a possible START or
/// console byte). The decoder never errors on content.
#[derive(Clone)]
pub struct FrameCodec {
    cfg: SerialPackerConfig,
    clock: Clock,
    state: State,
    len: usize,
    buf: Vec<u8>,
    crc: Crc16,
    last_byte: Option<Instant>,
    counters: SerialCounters,
}

impl fmt::Debug for FrameCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameCodec")
            .field("cfg", &self.cfg)
            .field("state", &self.state)
            .field("buffered", &self.buf.len())
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl FrameCodec {
    pub fn new(cfg: SerialPackerConfig) -> Result<Self, FramingError> {
        Self::with_clock(cfg, system_clock())
    }

    pub fn with_clock(cfg: SerialPackerConfig, clock: Clock) -> Result<Self, FramingError> {
        cfg.validate()?;
        Ok(FrameCodec {
            cfg,
            clock,
            state: State::Idle,
            len: 0,
            buf: Vec::new(),
            crc: Crc16::new(),
            last_byte: None,
            counters: SerialCounters::default(),
        })
    }

    pub fn config(&self) -> &SerialPackerConfig {
        &self.cfg
    }

    pub fn counters(&self) -> SerialCounters {
        self.counters
    }

    /// Whether the parser is between frames.
    pub fn is_idle(&self) -> bool {
        self.state == State::Idle
    }

    /// Drops a partial frame if the line has been quiet for `idle` at
    /// `now`; returns whether it did. `decode_at` does this itself before
    /// new bytes, so calling this is only needed to free memory early.
    pub fn reset_if_idle(&mut self, now: Instant) -> bool {
        let expired = match self.last_byte {
            Some(last) => now.saturating_duration_since(last) >= self.cfg.idle,
            None => false,
        };
        if expired && self.state != State::Idle {
            self.counters.idle_resets += 1;
            self.reset();
            return true;
        }
        false
    }

    fn reset(&mut self) {
        self.state = State::Idle;
        self.buf = Vec::new();
    }

    /// Accepts a LEN, or counts an invalid one and goes back to looking
    /// for START. Returns whether it was accepted.
    fn got_len(&mut self, len: usize) -> bool {
        if len == 0 {
            self.counters.zero_len += 1;
            self.state = State::Idle;
            false
        } else if len > self.cfg.max_packet {
            self.counters.too_long += 1;
            self.state = State::Idle;
            false
        } else {
            self.len = len;
            // Bounded by max_packet, validated ≤ 32767.
            self.buf = Vec::with_capacity(len);
            self.crc = Crc16::new();
            self.state = State::Data;
            true
        }
    }

    /// Decodes from `src`, all of whose unseen bytes arrived at `now`.
    ///
    /// Yields console runs as soon as they are seen (a run may be split
    /// over several items) and frames when their CRC checks out. Consumes
    /// every byte it is given, so nothing is ever left for `decode_eof`.
    pub fn decode_at(&mut self, src: &mut BytesMut, now: Instant) -> Option<RawIncoming> {
        if src.is_empty() {
            return None;
        }
        self.reset_if_idle(now);
        self.last_byte = Some(now);
        loop {
            if self.state == State::Idle {
                let run = src
                    .iter()
                    .position(|&b| b == self.cfg.start)
                    .unwrap_or(src.len());
                if run > 0 {
                    self.counters.console_bytes += run as u64;
                    return Some(RawIncoming::Console(src.split_to(run).freeze()));
                }
            }
            if src.is_empty() {
                return None;
            }
            let byte = src[0];
            match self.state {
                State::Idle => {
                    src.advance(1);
                    self.state = State::Len;
                }
                // A rejected LEN byte is left in `src` to be read again in
                // Idle: it may be the START of the real frame.
                State::Len => {
                    if self.cfg.one_byte_len() || byte < 0x80 {
                        if self.got_len(byte.into()) {
                            src.advance(1);
                        }
                    } else {
                        src.advance(1);
                        self.state = State::LenHigh(byte & 0x7F);
                    }
                }
                State::LenHigh(low) => {
                    if self.got_len(usize::from(low) | usize::from(byte) << 7) {
                        src.advance(1);
                    }
                }
                State::Data => {
                    let n = (self.len - self.buf.len()).min(src.len());
                    for &b in &src[..n] {
                        self.crc.update(b);
                    }
                    self.buf.extend_from_slice(&src[..n]);
                    src.advance(n);
                    if self.buf.len() == self.len {
                        self.state = State::CrcHigh;
                    }
                }
                State::CrcHigh => {
                    src.advance(1);
                    self.state = State::CrcLow(byte);
                }
                State::CrcLow(high) => {
                    src.advance(1);
                    let got = u16::from_be_bytes([high, byte]);
                    let payload = std::mem::take(&mut self.buf);
                    self.state = State::Idle;
                    if got == self.crc.value() {
                        self.counters.frames += 1;
                        return Some(RawIncoming::Frame(Bytes::from(payload)));
                    }
                    self.counters.bad_crc += 1;
                }
            }
        }
    }
}

impl Decoder for FrameCodec {
    type Item = RawIncoming;
    type Error = FramingError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<RawIncoming>, FramingError> {
        let now = (self.clock)();
        Ok(self.decode_at(src, now))
    }
}

impl Encoder<&[u8]> for FrameCodec {
    type Error = FramingError;

    fn encode(&mut self, payload: &[u8], dst: &mut BytesMut) -> Result<(), FramingError> {
        dst.extend_from_slice(&self.cfg.encode_frame(payload)?);
        Ok(())
    }
}

impl Encoder<Bytes> for FrameCodec {
    type Error = FramingError;

    fn encode(&mut self, payload: Bytes, dst: &mut BytesMut) -> Result<(), FramingError> {
        Encoder::<&[u8]>::encode(self, &payload, dst)
    }
}

/// Message-level SerialPacker codec: one message map per frame.
///
/// A frame whose payload is not exactly one MsgPack map is counted in
/// `bad_payload` and dropped.
#[derive(Clone, Debug)]
pub struct SerialPackerCodec {
    frames: FrameCodec,
    limits: Limits,
}

impl SerialPackerCodec {
    pub fn new(cfg: SerialPackerConfig) -> Result<Self, FramingError> {
        Self::with_clock(cfg, system_clock())
    }

    pub fn with_clock(cfg: SerialPackerConfig, clock: Clock) -> Result<Self, FramingError> {
        Ok(SerialPackerCodec {
            frames: FrameCodec::with_clock(cfg, clock)?,
            limits: message_limits(cfg.max_packet),
        })
    }

    pub fn config(&self) -> &SerialPackerConfig {
        self.frames.config()
    }

    pub fn counters(&self) -> SerialCounters {
        self.frames.counters()
    }

    /// The raw frame parser underneath (e.g. for `reset_if_idle`).
    pub fn frames_mut(&mut self) -> &mut FrameCodec {
        &mut self.frames
    }

    /// Decodes from `src`, all of whose unseen bytes arrived at `now`.
    pub fn decode_at(&mut self, src: &mut BytesMut, now: Instant) -> Option<Incoming> {
        loop {
            match self.frames.decode_at(src, now)? {
                RawIncoming::Console(bytes) => return Some(Incoming::Console(bytes)),
                RawIncoming::Frame(payload) => {
                    match msgpack::decode_exact(&payload, &self.limits) {
                        Ok(value @ Value::Map(_)) => return Some(Incoming::Message(value)),
                        Ok(other) => {
                            self.frames.counters.bad_payload += 1;
                            tracing::debug!(got = other.type_name(), "frame payload is not a map");
                        }
                        Err(e) => {
                            self.frames.counters.bad_payload += 1;
                            tracing::debug!("frame payload is not MsgPack: {e}");
                        }
                    }
                }
            }
        }
    }
}

impl Decoder for SerialPackerCodec {
    type Item = Incoming;
    type Error = FramingError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Incoming>, FramingError> {
        let now = (self.frames.clock)();
        Ok(self.decode_at(src, now))
    }
}

impl Encoder<&Value> for SerialPackerCodec {
    type Error = FramingError;

    fn encode(&mut self, msg: &Value, dst: &mut BytesMut) -> Result<(), FramingError> {
        let payload = encode_message(msg, self.frames.cfg.max_packet)?;
        Encoder::<&[u8]>::encode(&mut self.frames, &payload, dst)
    }
}

impl Encoder<Value> for SerialPackerCodec {
    type Error = FramingError;

    fn encode(&mut self, msg: Value, dst: &mut BytesMut) -> Result<(), FramingError> {
        Encoder::<&Value>::encode(self, &msg, dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(max_packet: usize) -> SerialPackerConfig {
        SerialPackerConfig {
            max_packet,
            ..SerialPackerConfig::default()
        }
    }

    /// Feeds `bytes` at `now` and collects everything decoded.
    fn feed(codec: &mut FrameCodec, bytes: &[u8], now: Instant) -> Vec<RawIncoming> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(item) = codec.decode_at(&mut buf, now) {
            out.push(item);
        }
        assert!(buf.is_empty(), "decoder left bytes behind");
        out
    }

    fn frame(p: &[u8]) -> RawIncoming {
        RawIncoming::Frame(Bytes::copy_from_slice(p))
    }

    fn console(p: &[u8]) -> RawIncoming {
        RawIncoming::Console(Bytes::copy_from_slice(p))
    }

    #[test]
    fn frame_between_console_text_is_split_out() {
        let c = cfg(127);
        let mut codec = FrameCodec::new(c).unwrap();
        let mut wire = b"boot\n".to_vec();
        wire.extend(c.encode_frame(b"\x81\xa1a\x01").unwrap());
        wire.extend_from_slice(b"ok");
        let out = feed(&mut codec, &wire, Instant::now());
        assert_eq!(
            out,
            [console(b"boot\n"), frame(b"\x81\xa1a\x01"), console(b"ok")]
        );
        assert_eq!(codec.counters().frames, 1);
        assert_eq!(codec.counters().console_bytes, 7);
    }

    #[test]
    fn two_byte_length_round_trips_at_the_boundaries() {
        let c = cfg(MAX_PACKET_LIMIT);
        for len in [1, 127, 128, 255, 256, 1000, MAX_PACKET_LIMIT] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let wire = c.encode_frame(&payload).unwrap();
            assert_eq!(wire.len(), len + if len < 128 { 4 } else { 5 });
            let mut codec = FrameCodec::new(c).unwrap();
            assert_eq!(feed(&mut codec, &wire, Instant::now()), [frame(&payload)]);
        }
    }

    #[test]
    fn bad_crc_is_counted_and_the_next_frame_recovered() {
        let c = cfg(127);
        let mut codec = FrameCodec::new(c).unwrap();
        let mut bad = c.encode_frame(b"\x01\x02\x03").unwrap();
        let last = bad.len() - 1;
        bad[last] ^= 0x40;
        bad.extend(c.encode_frame(b"\x04").unwrap());
        assert_eq!(feed(&mut codec, &bad, Instant::now()), [frame(b"\x04")]);
        assert_eq!(codec.counters().bad_crc, 1);
    }

    #[test]
    fn invalid_length_is_counted_and_its_byte_reread() {
        let c = cfg(127);
        let mut codec = FrameCodec::new(c).unwrap();
        // A stray START whose "LEN" is the real frame's START (0x85 > 127).
        let mut wire = vec![0x85];
        wire.extend(c.encode_frame(b"\x07").unwrap());
        // LEN = 0, then console text.
        wire.extend_from_slice(&[0x85, 0x00, b'z']);
        let out = feed(&mut codec, &wire, Instant::now());
        assert_eq!(out, [frame(b"\x07"), console(b"\x00z")]);
        assert_eq!(codec.counters().too_long, 1);
        assert_eq!(codec.counters().zero_len, 1);
    }

    #[test]
    fn partial_frame_is_dropped_after_idle() {
        let c = cfg(127);
        let clock = ManualClock::new();
        let mut codec = FrameCodec::with_clock(c, clock.clock()).unwrap();
        let wire = c.encode_frame(b"hello").unwrap();
        let mut buf = BytesMut::from(&wire[..4]);
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        assert!(!codec.is_idle());
        // A gap just under `idle` keeps the frame going…
        clock.advance(Duration::from_millis(99));
        buf.extend_from_slice(&wire[4..6]);
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        // …a gap of `idle` drops it: the rest is console text.
        clock.advance(Duration::from_millis(100));
        buf.extend_from_slice(&wire[6..]);
        let rest = codec.decode(&mut buf).unwrap();
        assert_eq!(rest, Some(console(&wire[6..])));
        assert_eq!(codec.counters().idle_resets, 1);
        // And a whole frame afterwards decodes.
        buf.extend_from_slice(&wire);
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(frame(b"hello")));
    }

    #[test]
    fn reset_if_idle_frees_a_stale_partial_frame() {
        let c = cfg(127);
        let mut codec = FrameCodec::new(c).unwrap();
        let t0 = Instant::now();
        feed(&mut codec, &[0x85, 0x05, 1], t0);
        assert!(!codec.reset_if_idle(t0 + Duration::from_millis(50)));
        assert!(codec.reset_if_idle(t0 + Duration::from_millis(100)));
        assert!(codec.is_idle());
    }

    #[test]
    fn encoder_refuses_empty_and_oversized_payloads() {
        let c = cfg(127);
        assert!(matches!(c.encode_frame(&[]), Err(FramingError::EmptyFrame)));
        assert!(matches!(
            c.encode_frame(&[0; 128]),
            Err(FramingError::OutgoingTooLarge { len: 128, max: 127 })
        ));
        assert!(matches!(cfg(0).validate(), Err(FramingError::Config(_))));
        assert!(FrameCodec::new(cfg(MAX_PACKET_LIMIT + 1)).is_err());
    }

    #[test]
    fn message_codec_drops_payloads_that_are_not_maps() {
        let c = cfg(127);
        let mut codec = SerialPackerCodec::new(c).unwrap();
        let msg = Value::map([("i", Value::Int(2))]);
        let mut wire = c.encode_frame(&[0xa1, b'x']).unwrap(); // a str
        wire.extend(c.encode_frame(&[0x81, 0xc1]).unwrap()); // malformed
        let mut buf = BytesMut::from(&wire[..]);
        codec.encode(&msg, &mut buf).unwrap();
        assert_eq!(
            codec.decode(&mut buf).unwrap(),
            Some(Incoming::Message(msg))
        );
        assert_eq!(codec.counters().bad_payload, 2);
    }
}
