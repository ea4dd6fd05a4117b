//! Arbitrary bytes through the SerialPacker decoders, with fuzzed read
//! sizes and idle gaps: no panic, every frame within the cap, and a valid
//! frame appended after the noise (and an idle gap) is always recovered.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use mux_runtime::framing::serial_packer::ManualClock;
use mux_runtime::framing::{FrameCodec, RawIncoming, SerialPackerCodec, SerialPackerConfig};
use std::time::Duration;
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    // Byte 0: read size; byte 1: which reads are followed by an idle gap
    // (bit i % 7 for read i), and bit 7 picks the one- or two-byte LEN form.
    let [split, gaps, data @ ..] = data else {
        return;
    };
    let read = usize::from(*split).max(1);
    let max_packet = if gaps & 0x80 != 0 { 1024 } else { 127 };
    let cfg = SerialPackerConfig {
        max_packet,
        ..SerialPackerConfig::default()
    };

    let clock = ManualClock::new();
    let mut raw = FrameCodec::with_clock(cfg, clock.clock()).expect("valid config");
    let mut messages = SerialPackerCodec::with_clock(cfg, clock.clock()).expect("valid config");
    let mut buf_raw = BytesMut::new();
    let mut buf_msg = BytesMut::new();
    for (i, chunk) in data.chunks(read).enumerate() {
        buf_raw.extend_from_slice(chunk);
        buf_msg.extend_from_slice(chunk);
        while let Some(item) = raw.decode(&mut buf_raw).expect("never fails") {
            if let RawIncoming::Frame(p) = item {
                assert!(!p.is_empty() && p.len() <= max_packet);
            }
        }
        while messages
            .decode(&mut buf_msg)
            .expect("never fails")
            .is_some()
        {}
        assert!(buf_raw.is_empty() && buf_msg.is_empty());
        if gaps & (1 << (i % 7)) != 0 {
            clock.advance(Duration::from_millis(100));
        }
    }

    // After an idle gap, a good frame always comes through.
    clock.advance(cfg.idle);
    let payload = b"\x81\xa1i\x02";
    buf_raw.extend_from_slice(&cfg.encode_frame(payload).expect("fits"));
    let mut found = false;
    while let Some(item) = raw.decode(&mut buf_raw).expect("never fails") {
        found |= item == RawIncoming::Frame(payload[..].into());
    }
    assert!(found, "frame after idle gap not recovered");
});
