//! Arbitrary bytes through the MsgPack decoder, the message parser and the
//! stream/lossless framings: no panic, no unbounded allocation, and every
//! message that parses survives its own encoding.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use mux_runtime::framing::{Incoming, LosslessCodec, LosslessConfig, StreamCodec, StreamConfig};
use mux_runtime::message::Message;
use mux_runtime::msgpack::{self, Limits};
use mux_runtime::Value;
use tokio_util::codec::Decoder;

const MAX: usize = 4096;

fn check_message(v: Value) {
    if let Ok(msg) = Message::from_value(v) {
        // Compared as bytes: NaN != NaN, but its encoding is stable.
        let bytes = msg.to_bytes();
        let again = Message::from_bytes(&bytes).expect("an encoded message parses");
        assert_eq!(
            again.to_bytes(),
            bytes,
            "message changed through its encoding"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks the read size, so splits get fuzzed too.
    let Some((&split, data)) = data.split_first() else {
        return;
    };
    let read = usize::from(split).max(1);

    if let Ok(Some((v, used))) = msgpack::decode(data, &Limits::default()) {
        assert!(used <= data.len());
        let re = msgpack::to_vec(&v);
        let again = msgpack::decode_exact(&re, &Limits::default()).expect("our encoding decodes");
        assert_eq!(
            msgpack::to_vec(&again),
            re,
            "value changed through its encoding"
        );
        check_message(v);
    }

    let mut stream = StreamCodec::new(StreamConfig { max_message: MAX });
    let mut buf = BytesMut::new();
    'reads: for chunk in data.chunks(read) {
        buf.extend_from_slice(chunk);
        loop {
            match stream.decode(&mut buf) {
                Ok(Some(Incoming::Message(v))) => check_message(v),
                Ok(Some(Incoming::Console(_))) => unreachable!("stream has no console"),
                Ok(None) => break,
                Err(_) => break 'reads,
            }
        }
        assert!(buf.len() < MAX + read, "stream buffered past its cap");
    }

    for lead_in in [None, Some(0x85)] {
        let mut codec = LosslessCodec::new(LosslessConfig {
            max_message: MAX,
            lead_in,
        });
        let mut buf = BytesMut::new();
        for chunk in data.chunks(read) {
            buf.extend_from_slice(chunk);
            while let Some(item) = codec.decode(&mut buf).expect("lossless never fails") {
                if let Incoming::Message(v) = item {
                    check_message(v);
                }
            }
            assert!(buf.len() < MAX + read + 1, "lossless buffered past its cap");
        }
        while codec
            .decode_eof(&mut buf)
            .expect("lossless never fails")
            .is_some()
        {}
        assert!(buf.is_empty());
    }
});
