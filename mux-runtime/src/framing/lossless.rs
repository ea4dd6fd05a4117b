//! MsgPack stream interleaved with console output: the framing of USB CDC
//! (lossless serial) links.
//!
//! A node's console and its messages share one byte stream. Messages are
//! MsgPack maps; a top-level positive fixint (0x00–0x7F) would be a message
//! that is never sent, so those bytes are ASCII console output. With a
//! `lead_in` byte configured, only that byte announces a message and every
//! other byte is console output.
//!
//! A console can print anything, so bytes that look like the start of a
//! message but are not one (malformed MsgPack, over the size cap, a lead-in
//! not followed by a map) are passed on as console output and counted; the
//! link never fails on content. Without a lead-in, stray map markers in the
//! console (0x80–0x8f, 0xde, 0xdf) hold back the console output after them
//! until the candidate either completes, fails or reaches `max_message`
//! bytes; configure a lead-in where consoles print binary.

use bytes::{Buf, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::{
    encode_message, message_limits, starts_map, FramingError, Incoming, DEFAULT_MAX_MESSAGE,
};
use crate::msgpack::{self, Limits};
use crate::value::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LosslessConfig {
    /// Largest message accepted or sent, in encoded bytes (lead-in excluded).
    pub max_message: usize,
    /// Byte written before every message; when set, only it starts one.
    pub lead_in: Option<u8>,
}

impl Default for LosslessConfig {
    fn default() -> Self {
        LosslessConfig {
            max_message: DEFAULT_MAX_MESSAGE,
            lead_in: None,
        }
    }
}

/// Counts of what the decoder saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LosslessCounters {
    pub messages: u64,
    /// Bytes yielded as console output.
    pub console_bytes: u64,
    /// Message candidates that turned out not to be messages (malformed, a
    /// lead-in without a map, or cut off by the end of the link); their
    /// first byte went to the console and scanning resumed after it.
    pub junk: u64,
    /// Message candidates still incomplete at `max_message` bytes.
    pub too_long: u64,
}

/// Decoder/encoder for a MsgPack stream mixed with console bytes.
///
/// The decoder never errors on content (only I/O errors pass through); a
/// console run may be split over several `Console` items.
#[derive(Clone, Debug)]
pub struct LosslessCodec {
    cfg: LosslessConfig,
    limits: Limits,
    counters: LosslessCounters,
}

/// What a message candidate at the front of the buffer turned out to be.
enum Candidate {
    Message(Value, usize),
    Incomplete,
    NotAMessage,
}

impl LosslessCodec {
    pub fn new(cfg: LosslessConfig) -> Self {
        LosslessCodec {
            cfg,
            limits: message_limits(cfg.max_message),
            counters: LosslessCounters::default(),
        }
    }

    pub fn config(&self) -> &LosslessConfig {
        &self.cfg
    }

    pub fn counters(&self) -> LosslessCounters {
        self.counters
    }

    fn is_candidate(&self, byte: u8) -> bool {
        match self.cfg.lead_in {
            Some(lead) => byte == lead,
            None => starts_map(byte),
        }
    }

    /// Examines the candidate at the start of `buf`.
    fn candidate(&mut self, buf: &[u8], eof: bool) -> Candidate {
        let skip = usize::from(self.cfg.lead_in.is_some());
        let body = &buf[skip..];
        let window = &body[..body.len().min(self.cfg.max_message)];
        if let Some(&first) = window.first() {
            if !starts_map(first) {
                self.counters.junk += 1;
                return Candidate::NotAMessage;
            }
        }
        match msgpack::decode(window, &self.limits) {
            Ok(Some((value, used))) => Candidate::Message(value, skip + used),
            Ok(None) if window.len() >= self.cfg.max_message => {
                self.counters.too_long += 1;
                Candidate::NotAMessage
            }
            Ok(None) if eof => {
                self.counters.junk += 1;
                Candidate::NotAMessage
            }
            Ok(None) => Candidate::Incomplete,
            Err(_) => {
                self.counters.junk += 1;
                Candidate::NotAMessage
            }
        }
    }

    fn console(&mut self, src: &mut BytesMut, len: usize) -> Option<Incoming> {
        self.counters.console_bytes += len as u64;
        Some(Incoming::Console(src.split_to(len).freeze()))
    }

    /// One item from the front of `src`; `eof`: no more bytes will come.
    fn next_item(&mut self, src: &mut BytesMut, eof: bool) -> Option<Incoming> {
        // src[..console] is console output not yet yielded.
        let mut console = 0;
        while console < src.len() {
            if !self.is_candidate(src[console]) {
                console += 1;
                continue;
            }
            match self.candidate(&src[console..], eof) {
                Candidate::NotAMessage => console += 1,
                // Console first; the message is decoded again next call.
                Candidate::Message(..) | Candidate::Incomplete if console > 0 => {
                    return self.console(src, console);
                }
                Candidate::Message(value, used) => {
                    src.advance(used);
                    self.counters.messages += 1;
                    return Some(Incoming::Message(value));
                }
                Candidate::Incomplete => return None,
            }
        }
        if console > 0 {
            return self.console(src, console);
        }
        None
    }
}

impl Default for LosslessCodec {
    fn default() -> Self {
        LosslessCodec::new(LosslessConfig::default())
    }
}

impl Decoder for LosslessCodec {
    type Item = Incoming;
    type Error = FramingError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Incoming>, FramingError> {
        Ok(self.next_item(src, false))
    }

    /// At the end of the link an incomplete message is console output too.
    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Incoming>, FramingError> {
        Ok(self.next_item(src, true))
    }
}

impl Encoder<&Value> for LosslessCodec {
    type Error = FramingError;

    fn encode(&mut self, msg: &Value, dst: &mut BytesMut) -> Result<(), FramingError> {
        let bytes = encode_message(msg, self.cfg.max_message)?;
        dst.reserve(bytes.len() + 1);
        if let Some(lead) = self.cfg.lead_in {
            dst.extend_from_slice(&[lead]);
        }
        dst.extend_from_slice(&bytes);
        Ok(())
    }
}

impl Encoder<Value> for LosslessCodec {
    type Error = FramingError;

    fn encode(&mut self, msg: Value, dst: &mut BytesMut) -> Result<(), FramingError> {
        Encoder::<&Value>::encode(self, &msg, dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn msg() -> Value {
        Value::map([("a", Value::Array(vec!["link".into()])), ("d", true.into())])
    }

    fn drain(codec: &mut LosslessCodec, bytes: &[u8]) -> Vec<Incoming> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(item) = codec.decode_eof(&mut buf).unwrap() {
            out.push(item);
        }
        assert!(buf.is_empty());
        out
    }

    fn console(s: &[u8]) -> Incoming {
        Incoming::Console(Bytes::copy_from_slice(s))
    }

    #[test]
    fn ascii_is_console_and_maps_are_messages() {
        let mut bytes = b"OK\n".to_vec();
        bytes.extend(msgpack::to_vec(&msg()));
        bytes.push(b'>');
        let out = drain(&mut LosslessCodec::default(), &bytes);
        assert_eq!(
            out,
            [console(b"OK\n"), Incoming::Message(msg()), console(b">")]
        );
    }

    #[test]
    fn console_before_an_incomplete_message_is_yielded_at_once() {
        let mut codec = LosslessCodec::default();
        let enc = msgpack::to_vec(&msg());
        let mut buf = BytesMut::from(&b"hi"[..]);
        buf.extend_from_slice(&enc[..3]);
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(console(b"hi")));
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(&enc[3..]);
        assert_eq!(
            codec.decode(&mut buf).unwrap(),
            Some(Incoming::Message(msg()))
        );
    }

    #[test]
    fn non_message_bytes_become_console_and_are_counted() {
        let mut codec = LosslessCodec::default();
        // UTF-8 "é" (c3 a9: not map markers), then a map marker followed by
        // the reserved byte, then a real message.
        let mut bytes = vec![0xc3, 0xa9, 0x81, 0xc1];
        bytes.extend(msgpack::to_vec(&msg()));
        let out = drain(&mut codec, &bytes);
        assert_eq!(
            out,
            [console(&[0xc3, 0xa9, 0x81, 0xc1]), Incoming::Message(msg())]
        );
        assert_eq!(codec.counters().junk, 1);
        assert_eq!(codec.counters().console_bytes, 4);
    }

    #[test]
    fn oversized_candidate_is_console_and_counted() {
        let mut codec = LosslessCodec::new(LosslessConfig {
            max_message: 8,
            lead_in: None,
        });
        // fixmap 15 followed by ASCII would need 30 bytes: over the cap.
        let mut bytes = vec![0x8f];
        bytes.extend_from_slice(b"abcdefghij");
        let out = drain(&mut codec, &bytes);
        let text: Vec<u8> = out
            .iter()
            .flat_map(|i| match i {
                Incoming::Console(b) => b.to_vec(),
                Incoming::Message(m) => panic!("unexpected message {m:?}"),
            })
            .collect();
        assert_eq!(text, bytes);
        assert_eq!(codec.counters().too_long, 1);
    }

    #[test]
    fn with_lead_in_only_the_lead_in_starts_a_message() {
        let cfg = LosslessConfig {
            lead_in: Some(0x85),
            ..LosslessConfig::default()
        };
        let mut codec = LosslessCodec::new(cfg);
        let mut wire = BytesMut::new();
        codec.encode(&msg(), &mut wire).unwrap();
        assert_eq!(wire[0], 0x85);
        // A bare map (no lead-in) is console; a lead-in without a map too.
        let mut bytes = msgpack::to_vec(&msg());
        bytes.extend_from_slice(&[0x85, b'x']);
        bytes.extend_from_slice(&wire);
        let out = drain(&mut codec, &bytes);
        let mut expect_console = msgpack::to_vec(&msg());
        expect_console.extend_from_slice(&[0x85, b'x']);
        assert_eq!(out, [console(&expect_console), Incoming::Message(msg())]);
        assert_eq!(codec.counters().junk, 1);
    }

    #[test]
    fn eof_turns_an_incomplete_message_into_console() {
        let enc = msgpack::to_vec(&msg());
        let out = drain(&mut LosslessCodec::default(), &enc[..5]);
        let text: Vec<u8> = out
            .iter()
            .flat_map(|i| match i {
                Incoming::Console(b) => b.to_vec(),
                Incoming::Message(_) => panic!("message from a truncated map"),
            })
            .collect();
        assert_eq!(text, &enc[..5]);
    }
}
