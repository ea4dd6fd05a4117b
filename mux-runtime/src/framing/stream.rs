//! MsgPack objects back to back: the framing of TCP and Unix-socket links.
//!
//! MsgPack is self-delimiting, so there is no length prefix. That also
//! means there is no way to find the next message after a malformed one:
//! a [`FramingError::Malformed`] or [`FramingError::TooLarge`] ends the link.

use bytes::{Buf, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::{encode_message, message_limits, FramingError, Incoming, DEFAULT_MAX_MESSAGE};
use crate::msgpack::{self, Limits};
use crate::value::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamConfig {
    /// Largest message accepted or sent, in encoded bytes.
    pub max_message: usize,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            max_message: DEFAULT_MAX_MESSAGE,
        }
    }
}

/// Counts of what the decoder passed over.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamCounters {
    /// Messages yielded.
    pub messages: u64,
    /// Well-formed top-level values that are not maps (not messages),
    /// skipped. MsgPack delimits them, so skipping is safe.
    pub not_a_map: u64,
}

/// Decoder/encoder for a plain MsgPack stream.
///
/// After an error the decoder has consumed nothing of the offending
/// message: the bytes stay in the buffer and decoding again reports the
/// same error. tokio-util's `FramedRead` ends the stream after an error;
/// the caller should close the link (there is no way to resynchronise).
#[derive(Clone, Debug)]
pub struct StreamCodec {
    cfg: StreamConfig,
    limits: Limits,
    /// Bytes consumed since the link opened, for error offsets.
    consumed: u64,
    counters: StreamCounters,
}

impl StreamCodec {
    pub fn new(cfg: StreamConfig) -> Self {
        StreamCodec {
            cfg,
            limits: message_limits(cfg.max_message),
            consumed: 0,
            counters: StreamCounters::default(),
        }
    }

    pub fn config(&self) -> &StreamConfig {
        &self.cfg
    }

    pub fn counters(&self) -> StreamCounters {
        self.counters
    }
}

impl Default for StreamCodec {
    fn default() -> Self {
        StreamCodec::new(StreamConfig::default())
    }
}

impl Decoder for StreamCodec {
    type Item = Incoming;
    type Error = FramingError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Incoming>, FramingError> {
        let max = self.cfg.max_message;
        while !src.is_empty() {
            // Never look past the cap: a message longer than it can't decode.
            let window = &src[..src.len().min(max)];
            match msgpack::decode(window, &self.limits) {
                Ok(Some((value, used))) => {
                    src.advance(used);
                    self.consumed += used as u64;
                    if matches!(value, Value::Map(_)) {
                        self.counters.messages += 1;
                        return Ok(Some(Incoming::Message(value)));
                    }
                    self.counters.not_a_map += 1;
                    tracing::debug!(
                        got = value.type_name(),
                        "skipping a top-level value that is not a message map"
                    );
                }
                Ok(None) if src.len() >= max => {
                    return Err(FramingError::TooLarge {
                        start: self.consumed,
                        max,
                    });
                }
                Ok(None) => return Ok(None),
                Err(source) => {
                    return Err(FramingError::Malformed {
                        offset: self.consumed + source.offset as u64,
                        start: self.consumed,
                        source,
                    });
                }
            }
        }
        Ok(None)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Incoming>, FramingError> {
        match self.decode(src)? {
            Some(item) => Ok(Some(item)),
            None if src.is_empty() => Ok(None),
            None => Err(FramingError::Truncated {
                start: self.consumed,
                len: src.len(),
            }),
        }
    }
}

impl Encoder<&Value> for StreamCodec {
    type Error = FramingError;

    fn encode(&mut self, msg: &Value, dst: &mut BytesMut) -> Result<(), FramingError> {
        dst.extend_from_slice(&encode_message(msg, self.cfg.max_message)?);
        Ok(())
    }
}

impl Encoder<Value> for StreamCodec {
    type Error = FramingError;

    fn encode(&mut self, msg: Value, dst: &mut BytesMut) -> Result<(), FramingError> {
        Encoder::<&Value>::encode(self, &msg, dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msgpack::DecodeErrorKind;

    fn msg(n: i128) -> Value {
        Value::map([("i", Value::Int(n))])
    }

    fn encoded(v: &Value) -> Vec<u8> {
        msgpack::to_vec(v)
    }

    #[test]
    fn back_to_back_messages_decode_in_order() {
        let mut codec = StreamCodec::default();
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&encoded(&msg(2)));
        buf.extend_from_slice(&encoded(&msg(4)));
        assert_eq!(
            codec.decode(&mut buf).unwrap(),
            Some(Incoming::Message(msg(2)))
        );
        assert_eq!(
            codec.decode(&mut buf).unwrap(),
            Some(Incoming::Message(msg(4)))
        );
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        assert_eq!(codec.counters().messages, 2);
    }

    #[test]
    fn partial_message_waits_for_more_bytes() {
        let bytes = encoded(&msg(300));
        let mut codec = StreamCodec::default();
        let mut buf = BytesMut::from(&bytes[..bytes.len() - 1]);
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(&bytes[bytes.len() - 1..]);
        assert_eq!(
            codec.decode(&mut buf).unwrap(),
            Some(Incoming::Message(msg(300)))
        );
    }

    #[test]
    fn malformed_byte_is_reported_with_link_offset_and_repeats() {
        let mut codec = StreamCodec::default();
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&encoded(&msg(2))); // 4 bytes
        buf.extend_from_slice(&[0x81, 0xa1, b'a', 0xc1]);
        assert!(codec.decode(&mut buf).unwrap().is_some());
        for _ in 0..2 {
            match codec.decode(&mut buf) {
                Err(FramingError::Malformed {
                    offset,
                    start,
                    source,
                }) => {
                    assert_eq!((offset, start), (7, 4));
                    assert_eq!(source.kind, DecodeErrorKind::ReservedMarker);
                }
                other => panic!("expected Malformed, got {other:?}"),
            }
        }
    }

    #[test]
    fn message_over_the_cap_is_refused_without_waiting_for_it() {
        let mut codec = StreamCodec::new(StreamConfig { max_message: 16 });
        // A bin claiming 1000 bytes is refused at its length field…
        let mut buf = BytesMut::from(&[0x81, 0xa1, b'd', 0xc5, 0x03, 0xe8][..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(FramingError::Malformed { .. })
        ));
        // …and many small items adding up past the cap once 16 bytes are in.
        let mut codec = StreamCodec::new(StreamConfig { max_message: 16 });
        let mut buf = BytesMut::from(&[0x81, 0xa1, b'd', 0xdc, 0x00, 0x0f][..]);
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(&[1; 10]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(FramingError::TooLarge { start: 0, max: 16 })
        ));
    }

    #[test]
    fn non_map_values_are_skipped_and_counted() {
        let mut codec = StreamCodec::default();
        let mut buf = BytesMut::from(&[0x01, 0xa1, b'x'][..]);
        buf.extend_from_slice(&encoded(&msg(6)));
        assert_eq!(
            codec.decode(&mut buf).unwrap(),
            Some(Incoming::Message(msg(6)))
        );
        assert_eq!(codec.counters().not_a_map, 2);
    }

    #[test]
    fn eof_inside_a_message_is_truncation() {
        let mut codec = StreamCodec::default();
        let mut buf = BytesMut::from(&[0x81, 0xa1][..]);
        assert!(matches!(
            codec.decode_eof(&mut buf),
            Err(FramingError::Truncated { start: 0, len: 2 })
        ));
    }

    #[test]
    fn encoder_refuses_non_maps_and_oversized_messages() {
        let mut codec = StreamCodec::new(StreamConfig { max_message: 8 });
        let mut dst = BytesMut::new();
        assert!(matches!(
            codec.encode(&Value::Int(1), &mut dst),
            Err(FramingError::NotAMap { got: _ })
        ));
        let big = Value::map([("d", Value::Bin(vec![0; 20]))]);
        assert!(matches!(
            codec.encode(&big, &mut dst),
            Err(FramingError::OutgoingTooLarge { max: 8, .. })
        ));
        codec.encode(msg(2), &mut dst).unwrap();
        assert_eq!(&dst[..], &encoded(&msg(2))[..]);
    }
}
