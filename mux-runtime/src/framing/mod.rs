//! How messages travel over a link's bytes (docs/protocol.md: Framing).
//!
//! Each framing is a tokio-util [`Decoder`](tokio_util::codec::Decoder) /
//! [`Encoder`](tokio_util::codec::Encoder) pair with no I/O inside:
//!
//! - [`stream`]: MsgPack objects back to back (TCP, Unix sockets).
//! - [`lossless`]: the same, interleaved with console bytes (USB CDC).
//! - [`serial_packer`]: CRC-checked frames on a lossy UART, console bytes
//!   between frames.
//!
//! Every decoder yields [`Incoming`] items; every encoder takes the message
//! map as a [`Value`]. Buffers are capped by the configured maximum message
//! size: no decoder allocates from a length field beyond it.

use bytes::Bytes;
use std::io;
use thiserror::Error;

use crate::msgpack::{DecodeError, Limits};
use crate::value::Value;

pub mod crc16;
pub mod lossless;
pub mod serial_packer;
pub mod stream;

pub use lossless::{LosslessCodec, LosslessConfig};
pub use serial_packer::{FrameCodec, RawIncoming, SerialPackerCodec, SerialPackerConfig};
pub use stream::{StreamCodec, StreamConfig};

/// Default cap on one message for the stream framings: 1 MiB.
pub const DEFAULT_MAX_MESSAGE: usize = 1 << 20;

/// What a decoder found on the link.
#[derive(Clone, Debug, PartialEq)]
pub enum Incoming {
    /// One protocol message: always a MsgPack map.
    Message(Value),
    /// A run of console output (whatever the node printed).
    Console(Bytes),
}

/// Why a framing could not decode or encode.
#[derive(Debug, Error)]
pub enum FramingError {
    /// Bytes that are not MsgPack on a stream link. The decoder cannot
    /// tell where the next message starts, so the link is finished.
    #[error(
        "link byte {offset}: malformed MsgPack in the message starting at link byte {start} ({source}); \
         a stream link cannot resynchronise: close and reconnect it"
    )]
    Malformed {
        /// Offset of the offending byte since the link opened.
        offset: u64,
        /// Offset of the first byte of the message containing it.
        start: u64,
        source: DecodeError,
    },
    /// A message still incomplete after `max` bytes.
    #[error(
        "link byte {start}: incoming message exceeds the limit of {max} bytes; \
         raise the link's max_message on both ends if such messages are legitimate"
    )]
    TooLarge { start: u64, max: usize },
    /// The link closed in the middle of a message.
    #[error("link closed after {len} bytes of a message starting at link byte {start}")]
    Truncated { start: u64, len: usize },
    /// Refused to send a message the peer would refuse to receive.
    #[error(
        "cannot send a message of {len} bytes: the link's limit is {max} bytes \
         (raise it on both ends, or send less per message)"
    )]
    OutgoingTooLarge { len: usize, max: usize },
    /// Only maps are messages; anything else would be misread by the peer.
    #[error("cannot send a {got} as a message: messages are MsgPack maps")]
    NotAMap { got: &'static str },
    /// A SerialPacker frame must carry at least one byte.
    #[error("cannot send an empty frame: SerialPacker frames carry 1 byte or more")]
    EmptyFrame,
    /// The framing's configuration cannot work.
    #[error("invalid framing configuration: {0}")]
    Config(String),
    #[error("link I/O: {0}")]
    Io(#[from] io::Error),
}

/// MsgPack decoding caps for messages of at most `max_message` bytes: no
/// length field may claim more than the whole message could hold.
pub fn message_limits(max_message: usize) -> Limits {
    Limits {
        max_bytes: max_message,
        max_items: max_message,
        max_depth: Limits::default().max_depth,
    }
}

/// Whether `byte` is a MsgPack map marker (fixmap, map16, map32): the only
/// bytes that can start a message.
pub fn starts_map(byte: u8) -> bool {
    matches!(byte, 0x80..=0x8f | 0xde | 0xdf)
}

/// Encodes a message map, refusing non-maps and messages over `max`.
fn encode_message(msg: &Value, max: usize) -> Result<Vec<u8>, FramingError> {
    if !matches!(msg, Value::Map(_)) {
        return Err(FramingError::NotAMap {
            got: msg.type_name(),
        });
    }
    let bytes = crate::msgpack::to_vec(msg);
    if bytes.len() > max {
        return Err(FramingError::OutgoingTooLarge {
            len: bytes.len(),
            max,
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{SinkExt, StreamExt};
    use tokio::io::AsyncWriteExt;
    use tokio_util::codec::{Decoder, Encoder, FramedRead, FramedWrite};

    fn msg(i: i128) -> Value {
        Value::map([
            ("a", Value::Array(vec!["sys".into(), "ping".into()])),
            ("i", Value::Int(i)),
        ])
    }

    /// Writes `msgs` with `codec` through a real pipe, with console text in
    /// between, and reads them back with the same framing.
    async fn through_pipe<C>(codec: C, console: &[u8]) -> Vec<Incoming>
    where
        C: Decoder<Item = Incoming, Error = FramingError>
            + Encoder<Value, Error = FramingError>
            + Clone
            + Send
            + 'static,
    {
        let (tx, rx) = tokio::io::duplex(64);
        let console = console.to_vec();
        let writer = {
            let codec = codec.clone();
            tokio::spawn(async move {
                let mut sink = FramedWrite::new(tx, codec);
                for i in [2, 4] {
                    sink.send(msg(i)).await.unwrap();
                    sink.get_mut().write_all(&console).await.unwrap();
                }
            })
        };
        let items: Vec<Incoming> = FramedRead::new(rx, codec)
            .map(|r| r.expect("decodes"))
            .collect()
            .await;
        writer.await.unwrap();
        items
    }

    fn messages(items: &[Incoming]) -> Vec<&Value> {
        items
            .iter()
            .filter_map(|i| match i {
                Incoming::Message(m) => Some(m),
                Incoming::Console(_) => None,
            })
            .collect()
    }

    fn console_len(items: &[Incoming]) -> usize {
        items
            .iter()
            .map(|i| match i {
                Incoming::Console(b) => b.len(),
                Incoming::Message(_) => 0,
            })
            .sum()
    }

    #[tokio::test]
    async fn codecs_work_inside_framed_read_and_write() {
        let items = through_pipe(StreamCodec::default(), b"").await;
        assert_eq!(messages(&items), [&msg(2), &msg(4)]);

        let items = through_pipe(LosslessCodec::default(), b"log line\n").await;
        assert_eq!(messages(&items), [&msg(2), &msg(4)]);
        assert_eq!(console_len(&items), 18);

        // A manual clock: a slow test machine must not trip the idle reset.
        let clock = serial_packer::ManualClock::new().clock();
        let codec = SerialPackerCodec::with_clock(SerialPackerConfig::default(), clock).unwrap();
        let items = through_pipe(codec, b"log line\n").await;
        assert_eq!(messages(&items), [&msg(2), &msg(4)]);
        assert_eq!(console_len(&items), 18);
    }
}
