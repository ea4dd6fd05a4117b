//! The normative vectors (tests/vectors/messages.json, reliable.json): every
//! entry decodes to its value and our encoder writes exactly its bytes.
//! frames.json is covered by the framing tests.

use mux_runtime::message::{Kind, Message};
use mux_runtime::msgpack::{self, Limits};
use mux_runtime::notation;
use mux_runtime::Value;
use std::path::PathBuf;

struct Vector {
    name: String,
    value: Value,
    bytes: Vec<u8>,
}

fn load(file: &str) -> Vec<Vector> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/vectors")
        .join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let json: serde_json::Value = serde_json::from_str(&text).expect("vector file is JSON");
    let entries = json.as_array().expect("vector file is an array");
    assert!(!entries.is_empty(), "{file} has no vectors");
    entries
        .iter()
        .map(|e| {
            let name = e["name"].as_str().expect("vector has a name").to_owned();
            let value = notation::from_json(&e["value"])
                .unwrap_or_else(|err| panic!("{file} {name:?}: bad notation: {err}"));
            let bytes = hex::decode(e["hex"].as_str().expect("vector has hex"))
                .unwrap_or_else(|err| panic!("{file} {name:?}: bad hex: {err}"));
            Vector { name, value, bytes }
        })
        .collect()
}

fn check_codec(file: &str) -> Vec<Vector> {
    let vectors = load(file);
    for v in &vectors {
        let decoded = msgpack::decode_exact(&v.bytes, &Limits::default())
            .unwrap_or_else(|e| panic!("{file} {:?}: decode failed: {e}", v.name));
        assert_eq!(decoded, v.value, "{file} {:?}: decoded value", v.name);
        assert_eq!(
            hex::encode(msgpack::to_vec(&v.value)),
            hex::encode(&v.bytes),
            "{file} {:?}: encoded bytes",
            v.name
        );
    }
    vectors
}

#[test]
fn message_vectors_decode_to_their_values_and_encode_to_their_bytes() {
    check_codec("messages.json");
}

#[test]
fn reliable_vectors_decode_to_their_values_and_encode_to_their_bytes() {
    check_codec("reliable.json");
}

/// What each message vector is, by its name.
const KINDS: &[(&str, Kind)] = &[
    ("request ls", Kind::Request),
    ("reply ls", Kind::Reply),
    ("ping", Kind::Request),
    ("ping reply", Kind::Reply),
    ("error well-known", Kind::Error),
    ("error generic", Kind::Error),
    ("no-path error", Kind::Error),
    ("stream request", Kind::Request),
    ("stream item", Kind::StreamItem),
    ("stream end", Kind::StreamEnd),
    ("cancel", Kind::Cancel),
    // A fire-and-forget request has the unsolicited shape: `a` without `i`.
    ("fire and forget wdt", Kind::Unsolicited),
    ("unsolicited link up", Kind::Unsolicited),
    ("mux link down", Kind::Unsolicited),
    ("cfg delete", Kind::Request),
    ("fs write bytes", Kind::Request),
    ("int path element", Kind::Request),
    ("big seq", Kind::Request),
    ("negative and nil", Kind::Reply),
    ("float64 value", Kind::Reply),
    ("float32 value", Kind::Reply),
];

#[test]
fn every_message_vector_parses_classifies_and_reencodes_exactly() {
    let vectors = load("messages.json");
    for v in &vectors {
        let msg = Message::from_value(v.value.clone())
            .unwrap_or_else(|e| panic!("{:?}: not a message: {e}", v.name));
        let expected = KINDS
            .iter()
            .find(|(name, _)| *name == v.name)
            .unwrap_or_else(|| panic!("vector {:?} is missing from the KINDS table", v.name))
            .1;
        assert_eq!(msg.kind(), expected, "{:?}: kind", v.name);
        assert_eq!(
            hex::encode(msg.to_bytes()),
            hex::encode(&v.bytes),
            "{:?}: re-encoded message",
            v.name
        );
        assert_eq!(
            Message::from_bytes(&v.bytes).as_ref(),
            Ok(&msg),
            "{:?}",
            v.name
        );
    }
    // The table names no vector that has gone away.
    for (name, _) in KINDS {
        assert!(
            vectors.iter().any(|v| v.name == *name),
            "KINDS names {name:?}, which is not in messages.json"
        );
    }
}

#[test]
fn message_vectors_parse_the_same_with_keys_reversed() {
    for v in load("messages.json") {
        let Value::Map(mut pairs) = v.value.clone() else {
            panic!("{:?} is not a map", v.name);
        };
        pairs.reverse();
        let reversed = Message::from_value(Value::Map(pairs)).unwrap();
        assert_eq!(
            reversed.to_bytes(),
            v.bytes,
            "{:?}: MicroPython may order keys freely",
            v.name
        );
    }
}

#[test]
fn well_known_error_vectors_carry_their_kind_and_args() {
    use mux_runtime::error::{RemoteError, WellKnown};
    let vectors = load("messages.json");
    let find = |name: &str| {
        let v = vectors.iter().find(|v| v.name == name).unwrap();
        Message::from_value(v.value.clone()).unwrap()
    };
    let Message::Error { seq, error } = find("no-path error") else {
        panic!("not an error");
    };
    assert_eq!(seq, 9);
    assert_eq!(error.kind(), Some(WellKnown::NoPath));
    assert_eq!(
        error.to_string(),
        "no such command path ['nope']: no such app"
    );
    let Message::Error { error, .. } = find("error generic") else {
        panic!("not an error");
    };
    assert_eq!(error, RemoteError::Generic("E:ValueError('bad')".into()));
}
