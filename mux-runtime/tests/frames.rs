//! The normative framing vectors (tests/vectors/frames.json): every frame
//! is encoded to exactly its bytes and decodes back, whole or split at any
//! byte; the console mixes yield their console text and their messages.

use bytes::BytesMut;
use mux_runtime::framing::crc16::crc16;
use mux_runtime::framing::serial_packer::ManualClock;
use mux_runtime::framing::{
    FrameCodec, Incoming, LosslessCodec, LosslessConfig, RawIncoming, SerialPackerCodec,
    SerialPackerConfig,
};
use mux_runtime::msgpack::{self, Limits};
use mux_runtime::Value;
use std::path::PathBuf;
use tokio_util::codec::{Decoder, Encoder};

fn vectors() -> serde_json::Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/vectors/frames.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).expect("frames.json is JSON")
}

fn hex_field(v: &serde_json::Value, key: &str) -> Vec<u8> {
    let s = v[key]
        .as_str()
        .unwrap_or_else(|| panic!("vector lacks {key}"));
    hex::decode(s).unwrap_or_else(|e| panic!("{key}: bad hex: {e}"))
}

fn serial_config(v: &serde_json::Value) -> SerialPackerConfig {
    let start = hex_field(v, "start");
    assert_eq!(start.len(), 1, "start is one byte");
    SerialPackerConfig {
        start: start[0],
        max_packet: v["max_packet"].as_u64().expect("max_packet") as usize,
        ..SerialPackerConfig::default()
    }
}

/// Feeds `chunks` in order and collects every item, then the EOF items.
fn run<D>(codec: &mut D, chunks: &[&[u8]]) -> Vec<D::Item>
where
    D: Decoder,
    D::Error: std::fmt::Debug,
{
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        while let Some(item) = codec.decode(&mut buf).expect("decodes") {
            out.push(item);
        }
    }
    while let Some(item) = codec.decode_eof(&mut buf).expect("decodes at eof") {
        out.push(item);
    }
    assert!(buf.is_empty(), "decoder left {} bytes", buf.len());
    out
}

/// Console text (all runs concatenated) and messages, in order.
fn split_items(items: Vec<Incoming>) -> (Vec<u8>, Vec<Value>) {
    let mut console = Vec::new();
    let mut messages = Vec::new();
    for item in items {
        match item {
            Incoming::Console(b) => console.extend_from_slice(&b),
            Incoming::Message(m) => messages.push(m),
        }
    }
    (console, messages)
}

fn messages_of(v: &serde_json::Value) -> Vec<Value> {
    v["messages_hex"]
        .as_array()
        .expect("messages_hex")
        .iter()
        .map(|h| {
            let bytes = hex::decode(h.as_str().expect("hex string")).expect("hex");
            msgpack::decode_exact(&bytes, &Limits::default()).expect("message decodes")
        })
        .collect()
}

#[test]
fn crc16_check_value_matches_the_vector() {
    let v = vectors();
    let input = v["crc16_check"]["input_ascii"].as_str().expect("input");
    let crc = hex_field(&v["crc16_check"], "crc");
    assert_eq!(crc16(input.as_bytes()).to_be_bytes().to_vec(), crc);
}

#[test]
fn frame_vectors_encode_to_their_bytes_and_decode_back() {
    let v = vectors();
    let frames = v["frames"].as_array().expect("frames");
    assert!(!frames.is_empty());
    for f in frames {
        let name = f["name"].as_str().expect("name");
        let cfg = serial_config(f);
        let payload = hex_field(f, "payload_hex");
        let wire = hex_field(f, "frame_hex");

        // Raw level: payload -> exact frame bytes -> payload.
        assert_eq!(
            hex::encode(cfg.encode_frame(&payload).unwrap()),
            hex::encode(&wire),
            "{name}: encoded frame"
        );
        let mut raw = FrameCodec::with_clock(cfg, ManualClock::new().clock()).unwrap();
        assert_eq!(
            run(&mut raw, &[&wire]),
            [RawIncoming::Frame(payload.clone().into())],
            "{name}: raw decode"
        );

        // Message level: the payload's map encodes to the same frame and
        // the frame decodes to it, however the bytes are split.
        let msg = msgpack::decode_exact(&payload, &Limits::default()).expect("payload is MsgPack");
        let mut codec = SerialPackerCodec::with_clock(cfg, ManualClock::new().clock()).unwrap();
        let mut out = BytesMut::new();
        codec.encode(&msg, &mut out).unwrap();
        assert_eq!(
            hex::encode(&out),
            hex::encode(&wire),
            "{name}: message frame"
        );
        for cut in 0..=wire.len() {
            let (a, b) = wire.split_at(cut);
            let mut codec = SerialPackerCodec::with_clock(cfg, ManualClock::new().clock()).unwrap();
            assert_eq!(
                run(&mut codec, &[a, b]),
                [Incoming::Message(msg.clone())],
                "{name}: split at {cut}"
            );
        }
        let one_by_one: Vec<&[u8]> = wire.chunks(1).collect();
        let mut codec = SerialPackerCodec::with_clock(cfg, ManualClock::new().clock()).unwrap();
        assert_eq!(
            run(&mut codec, &one_by_one),
            [Incoming::Message(msg)],
            "{name}: byte by byte"
        );
    }
}

#[test]
fn serial_console_mix_yields_console_text_and_message() {
    let v = vectors();
    let mix = &v["console_mix"];
    let stream = hex_field(mix, "stream_hex");
    let console = mix["console_ascii"].as_str().expect("console_ascii");
    let messages = messages_of(mix);
    let cfg = SerialPackerConfig::default();

    let chunkings: Vec<Vec<&[u8]>> = vec![vec![&stream], stream.chunks(1).collect()];
    for chunks in chunkings {
        let mut codec = SerialPackerCodec::with_clock(cfg, ManualClock::new().clock()).unwrap();
        let (text, got) = split_items(run(&mut codec, &chunks));
        assert_eq!(String::from_utf8_lossy(&text), console);
        assert_eq!(got, messages);
        assert_eq!(codec.counters().frames, 1);
    }

    // Our encoder writes the frame between the console text exactly.
    let mut codec = SerialPackerCodec::new(cfg).unwrap();
    let mut wire = BytesMut::new();
    codec.encode(&messages[0], &mut wire).unwrap();
    let frame_at = console.find("hi").expect("console text after the frame");
    let mut expect = console.as_bytes()[..frame_at].to_vec();
    expect.extend_from_slice(&wire);
    expect.extend_from_slice(&console.as_bytes()[frame_at..]);
    assert_eq!(hex::encode(expect), hex::encode(&stream));
}

#[test]
fn lossless_mix_yields_console_text_and_message() {
    let v = vectors();
    let mix = &v["lossless_mix"];
    let stream = hex_field(mix, "stream_hex");
    let console = mix["console_ascii"].as_str().expect("console_ascii");
    let messages = messages_of(mix);

    for cut in 0..=stream.len() {
        let (a, b) = stream.split_at(cut);
        let mut codec = LosslessCodec::new(LosslessConfig::default());
        let (text, got) = split_items(run(&mut codec, &[a, b]));
        assert_eq!(String::from_utf8_lossy(&text), console, "split at {cut}");
        assert_eq!(got, messages, "split at {cut}");
    }

    // Our encoder writes the message between the console text exactly.
    let mut codec = LosslessCodec::new(LosslessConfig::default());
    let mut wire = BytesMut::new();
    codec.encode(&messages[0], &mut wire).unwrap();
    let mut expect = b"OK\n".to_vec();
    expect.extend_from_slice(&wire);
    expect.push(b'>');
    assert_eq!(console, "OK\n>");
    assert_eq!(hex::encode(expect), hex::encode(&stream));
}
