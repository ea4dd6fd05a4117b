//! Properties of the MsgPack codec over arbitrary values.

use mux_runtime::msgpack::{self, Limits};
use mux_runtime::Value;
use proptest::prelude::*;

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Nil),
        any::<bool>().prop_map(Value::Bool),
        // MsgPack's whole integer range: i64::MIN ..= u64::MAX.
        (i128::from(i64::MIN)..=i128::from(u64::MAX)).prop_map(Value::Int),
        any::<i8>().prop_map(|i| Value::Int(i.into())),
        // NaN != NaN; it has its own test below.
        any::<f64>()
            .prop_filter("not NaN", |x| !x.is_nan())
            .prop_map(Value::Float),
        any::<f32>()
            .prop_filter("not NaN", |x| !x.is_nan())
            .prop_map(|x| Value::Float(x.into())),
        ".{0,40}".prop_map(Value::Str),
        proptest::collection::vec(any::<u8>(), 0..300).prop_map(Value::Bin),
        "[_a-z-]{0,12}".prop_map(Value::Proxy),
        // Ext 4 with a UTF-8 payload is a proxy, so other types only.
        (
            any::<i8>().prop_filter("not the proxy type", |t| *t != 4),
            proptest::collection::vec(any::<u8>(), 0..20)
        )
            .prop_map(|(t, d)| Value::Ext(t, d)),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            proptest::collection::vec((inner.clone(), inner), 0..8).prop_map(Value::Map),
        ]
    })
}

proptest! {
    #[test]
    fn values_round_trip_through_encode_and_decode(v in value()) {
        let bytes = msgpack::to_vec(&v);
        let (back, used) = msgpack::decode(&bytes, &Limits::default())
            .expect("own encoding decodes")
            .expect("own encoding is complete");
        prop_assert_eq!(used, bytes.len());
        prop_assert_eq!(back, v);
    }

    #[test]
    fn every_strict_prefix_is_incomplete(v in value()) {
        let bytes = msgpack::to_vec(&v);
        for cut in 0..bytes.len() {
            prop_assert_eq!(msgpack::decode(&bytes[..cut], &Limits::default()), Ok(None), "cut at {}", cut);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        // Any outcome is fine but a panic; a success must not claim more bytes than given.
        if let Ok(Some((_, used))) = msgpack::decode(&bytes, &Limits::default()) {
            prop_assert!(used <= bytes.len());
        }
    }

    #[test]
    fn hostile_length_fields_never_panic_or_overallocate(
        marker in prop::sample::select(vec![0xc4u8, 0xc5, 0xc6, 0xd9, 0xda, 0xdb, 0xdc, 0xdd, 0xde, 0xdf, 0xc7, 0xc8, 0xc9]),
        len in any::<[u8; 4]>(),
        tail in proptest::collection::vec(any::<u8>(), 0..16),
    ) {
        let mut bytes = vec![marker];
        bytes.extend_from_slice(&len);
        bytes.extend_from_slice(&tail);
        let _ = msgpack::decode(&bytes, &Limits::default());
    }
}

#[test]
fn nan_survives_the_round_trip() {
    let bytes = msgpack::to_vec(&Value::Float(f64::NAN));
    let back = msgpack::decode_exact(&bytes, &Limits::default()).unwrap();
    assert!(matches!(back, Value::Float(x) if x.is_nan()), "{back:?}");
}

/// Maps made mostly of message keys with plausible and implausible values.
fn message_like() -> impl Strategy<Value = Value> {
    let key = prop::sample::select(vec!["a", "d", "i", "e", "r", "n", "x", "zz"]);
    let field = prop_oneof![
        value(),
        (0i128..1 << 33).prop_map(Value::Int),
        proptest::collection::vec(
            prop_oneof![
                "[a-z]{1,4}".prop_map(Value::Str),
                (-5i128..5).prop_map(Value::Int)
            ],
            0..4
        )
        .prop_map(Value::Array),
        Just(Value::Bool(false)),
        "_[A-Za-z]{2,5}".prop_map(Value::Proxy),
        "E:[a-z]{0,5}".prop_map(Value::Str),
    ];
    proptest::collection::vec((key.prop_map(Value::from), field), 0..6).prop_map(Value::Map)
}

proptest! {
    #[test]
    fn whatever_parses_as_a_message_reencodes_to_the_same_message(v in message_like()) {
        use mux_runtime::message::Message;
        if let Ok(msg) = Message::from_value(v) {
            let back = Message::from_bytes(&msg.to_bytes());
            prop_assert_eq!(back, Ok(msg.clone()));
            let mut flipped = msg.clone();
            flipped.flip_seq();
            flipped.flip_seq();
            prop_assert_eq!(flipped, msg);
        }
    }
}
