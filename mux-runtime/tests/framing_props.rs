//! Properties of the link framings: however the bytes are split into reads,
//! every decoder yields the same console text and messages; SerialPacker
//! survives corruption and recovers the intact frames after it.

use bytes::BytesMut;
use mux_runtime::framing::serial_packer::ManualClock;
use mux_runtime::framing::{
    Incoming, LosslessCodec, LosslessConfig, SerialPackerCodec, SerialPackerConfig, StreamCodec,
    StreamConfig,
};
use mux_runtime::msgpack;
use mux_runtime::Value;
use proptest::prelude::*;
use tokio_util::codec::{Decoder, Encoder};

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Nil),
        any::<bool>().prop_map(Value::Bool),
        (i128::from(i64::MIN)..=i128::from(u64::MAX)).prop_map(Value::Int),
        any::<i8>().prop_map(|i| Value::Int(i.into())),
        any::<f64>()
            .prop_filter("not NaN", |x| !x.is_nan())
            .prop_map(Value::Float),
        ".{0,20}".prop_map(Value::Str),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::Bin),
        "[_a-z-]{0,8}".prop_map(Value::Proxy),
        (
            any::<i8>().prop_filter("not the proxy type", |t| *t != 4),
            proptest::collection::vec(any::<u8>(), 0..10)
        )
            .prop_map(|(t, d)| Value::Ext(t, d)),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec((inner.clone(), inner), 0..6).prop_map(Value::Map),
        ]
    })
}

/// A message: a map with arbitrary keys and values.
fn message() -> impl Strategy<Value = Value> {
    proptest::collection::vec((value(), value()), 0..6).prop_map(Value::Map)
}

#[derive(Clone, Debug)]
enum Segment {
    Console(Vec<u8>),
    Message(Value),
}

/// Console runs made of bytes that `ok` allows, interleaved with messages.
fn segments(ok: fn(u8) -> bool) -> impl Strategy<Value = Vec<Segment>> {
    let console = proptest::collection::vec(
        any::<u8>().prop_filter("console byte", move |b| ok(*b)),
        1..12,
    )
    .prop_map(Segment::Console);
    proptest::collection::vec(
        prop_oneof![console, message().prop_map(Segment::Message)],
        0..10,
    )
}

/// How to cut the wire into reads.
#[derive(Clone, Debug)]
enum Chunking {
    Whole,
    Bytes,
    /// Cut points, as fractions of the length in 1/1000.
    Random(Vec<u16>),
}

fn chunking() -> impl Strategy<Value = Chunking> {
    prop_oneof![
        Just(Chunking::Whole),
        Just(Chunking::Bytes),
        proptest::collection::vec(0u16..1000, 0..20).prop_map(Chunking::Random),
    ]
}

fn chunks<'a>(wire: &'a [u8], how: &Chunking) -> Vec<&'a [u8]> {
    match how {
        Chunking::Whole => vec![wire],
        Chunking::Bytes => wire.chunks(1).collect(),
        Chunking::Random(fracs) => {
            let mut cuts: Vec<usize> = fracs
                .iter()
                .map(|f| wire.len() * usize::from(*f) / 1000)
                .collect();
            cuts.push(0);
            cuts.push(wire.len());
            cuts.sort_unstable();
            cuts.windows(2).map(|w| &wire[w[0]..w[1]]).collect()
        }
    }
}

/// Merges adjacent console runs and drops empty ones, so sequences that
/// differ only in how console output was split compare equal.
fn normalize(items: impl IntoIterator<Item = Incoming>) -> Vec<Incoming> {
    let mut out: Vec<Incoming> = Vec::new();
    for item in items {
        match (out.last_mut(), item) {
            (_, Incoming::Console(b)) if b.is_empty() => {}
            (Some(Incoming::Console(prev)), Incoming::Console(b)) => {
                let mut joined = prev.to_vec();
                joined.extend_from_slice(&b);
                *prev = joined.into();
            }
            (_, item) => out.push(item),
        }
    }
    out
}

fn expected(segs: &[Segment]) -> Vec<Incoming> {
    normalize(segs.iter().map(|s| match s {
        Segment::Console(b) => Incoming::Console(b.clone().into()),
        Segment::Message(m) => Incoming::Message(m.clone()),
    }))
}

/// Writes console runs raw and messages through `codec`'s encoder.
fn wire_of<C: for<'a> Encoder<&'a Value>>(codec: &mut C, segs: &[Segment]) -> Vec<u8>
where
    for<'a> <C as Encoder<&'a Value>>::Error: std::fmt::Debug,
{
    let mut wire = BytesMut::new();
    for s in segs {
        match s {
            Segment::Console(b) => wire.extend_from_slice(b),
            Segment::Message(m) => codec.encode(m, &mut wire).expect("message encodes"),
        }
    }
    wire.to_vec()
}

fn decode_all<D>(codec: &mut D, reads: &[&[u8]]) -> Vec<Incoming>
where
    D: Decoder<Item = Incoming>,
    D::Error: std::fmt::Debug,
{
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for read in reads {
        buf.extend_from_slice(read);
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

fn serial_codec(max_packet: usize) -> SerialPackerCodec {
    let cfg = SerialPackerConfig {
        max_packet,
        ..SerialPackerConfig::default()
    };
    SerialPackerCodec::with_clock(cfg, ManualClock::new().clock()).unwrap()
}

/// Keeps only the messages that fit in `max` encoded bytes.
fn fitting(segs: Vec<Segment>, max: usize) -> Vec<Segment> {
    segs.into_iter()
        .filter(|s| match s {
            Segment::Message(m) => msgpack::to_vec(m).len() <= max,
            Segment::Console(_) => true,
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn stream_yields_the_same_messages_however_split(
        msgs in proptest::collection::vec(message(), 0..10),
        how in chunking(),
    ) {
        let segs: Vec<Segment> = msgs.into_iter().map(Segment::Message).collect();
        let mut codec = StreamCodec::new(StreamConfig::default());
        let wire = wire_of(&mut codec, &segs);
        let got = decode_all(&mut codec, &chunks(&wire, &how));
        prop_assert_eq!(normalize(got), expected(&segs));
    }

    #[test]
    fn lossless_yields_the_same_sequence_however_split(
        segs in segments(|b| b < 0x80),
        how in chunking(),
    ) {
        let mut codec = LosslessCodec::new(LosslessConfig::default());
        let wire = wire_of(&mut codec, &segs);
        let got = decode_all(&mut codec, &chunks(&wire, &how));
        prop_assert_eq!(normalize(got), expected(&segs));
        prop_assert_eq!(codec.counters().junk, 0);
    }

    #[test]
    fn lossless_with_lead_in_passes_any_other_console_byte(
        segs in segments(|b| b != 0x85),
        how in chunking(),
    ) {
        let cfg = LosslessConfig { lead_in: Some(0x85), ..LosslessConfig::default() };
        let mut codec = LosslessCodec::new(cfg);
        let wire = wire_of(&mut codec, &segs);
        let got = decode_all(&mut codec, &chunks(&wire, &how));
        prop_assert_eq!(normalize(got), expected(&segs));
    }

    #[test]
    fn serial_packer_yields_the_same_sequence_however_split(
        segs in segments(|b| b != 0x85),
        max_packet in prop_oneof![Just(255usize), Just(32767usize)],
        how in chunking(),
    ) {
        let segs = fitting(segs, max_packet);
        let mut codec = serial_codec(max_packet);
        let wire = wire_of(&mut codec, &segs);
        let got = decode_all(&mut codec, &chunks(&wire, &how));
        prop_assert_eq!(normalize(got), expected(&segs));
        let c = codec.counters();
        prop_assert_eq!((c.bad_crc, c.too_long, c.zero_len, c.bad_payload), (0, 0, 0, 0));
    }

    /// Bursts (console text, one frame) separated by idle gaps; some bytes
    /// corrupted. The decoder must not panic, and every message of an
    /// intact burst comes out, in order. (A corrupted frame may rarely pass
    /// the CRC, so extra messages are tolerated.)
    #[test]
    fn serial_packer_recovers_intact_frames_after_corruption(
        bursts in proptest::collection::vec(
            (proptest::collection::vec(any::<u8>().prop_filter("not START", |b| *b != 0x85), 0..8),
             message()),
            1..8),
        flips in proptest::collection::vec((any::<usize>(), any::<usize>(), 1u8..=255), 0..6),
        max_packet in prop_oneof![Just(255usize), Just(32767usize)],
        how in chunking(),
    ) {
        let cfg = SerialPackerConfig { max_packet, ..SerialPackerConfig::default() };
        let clock = ManualClock::new();
        let mut codec = SerialPackerCodec::with_clock(cfg, clock.clock()).unwrap();
        let bursts: Vec<(Vec<u8>, Value)> = bursts
            .into_iter()
            .filter(|(_, m)| msgpack::to_vec(m).len() <= max_packet)
            .collect();
        let mut wires: Vec<Vec<u8>> = bursts
            .iter()
            .map(|(console, m)| {
                let mut w = BytesMut::from(&console[..]);
                codec.encode(m, &mut w).unwrap();
                w.to_vec()
            })
            .collect();
        let mut corrupted = vec![false; wires.len()];
        if !wires.is_empty() {
            for (burst, at, mask) in flips {
                let b = burst % wires.len();
                let i = at % wires[b].len();
                wires[b][i] ^= mask;
                corrupted[b] = true;
            }
        }
        let mut got = Vec::new();
        for w in &wires {
            got.extend(decode_all(&mut codec, &chunks(w, &how)));
            clock.advance(cfg.idle);
        }
        let got: Vec<Value> = got
            .into_iter()
            .filter_map(|i| match i { Incoming::Message(m) => Some(m), Incoming::Console(_) => None })
            .collect();
        let mut rest = got.iter();
        for ((_, m), bad) in bursts.iter().zip(&corrupted) {
            if !bad {
                prop_assert!(rest.any(|g| g == m), "intact message {:?} missing from {:?}", m, got);
            }
        }
    }

    #[test]
    fn decoders_survive_arbitrary_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..600),
        how in chunking(),
    ) {
        let reads = chunks(&bytes, &how);
        // The stream decoder may fail, but must not panic or over-read.
        let mut stream = StreamCodec::new(StreamConfig { max_message: 256 });
        let mut buf = BytesMut::new();
        'outer: for read in &reads {
            buf.extend_from_slice(read);
            loop {
                match stream.decode(&mut buf) {
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => break 'outer,
                }
            }
            prop_assert!(buf.len() <= 256 + read.len());
        }
        // Lossless and SerialPacker never fail on content.
        let cfg = LosslessConfig { max_message: 256, lead_in: None };
        decode_all(&mut LosslessCodec::new(cfg), &reads);
        let cfg = LosslessConfig { max_message: 256, lead_in: Some(0x85) };
        decode_all(&mut LosslessCodec::new(cfg), &reads);
        decode_all(&mut serial_codec(255), &reads);
        decode_all(&mut serial_codec(32767), &reads);
    }
}
