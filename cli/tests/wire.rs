//! `moat wire` through the built binary.

use std::process::{Command, Output};

fn moat(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_moat"))
        .args(args)
        .output()
        .expect("run moat")
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "moat failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

const STREAM_ITEM_HEX: &str = "83a164ca41ac0000a16907a16e01";

#[test]
fn decode_prints_the_vector_notation() {
    let out = stdout(&moat(&["wire", "decode", STREAM_ITEM_HEX]));
    let json: serde_json::Value = serde_json::from_str(&out).expect("decode prints JSON");
    assert_eq!(
        json,
        serde_json::json!({"$map": [["d", {"$float": 21.5}], ["i", 7], ["n", 1]]})
    );
    assert!(out.contains('\n'), "pretty-printed: {out}");
}

#[test]
fn decoded_json_encodes_back_to_the_same_bytes() {
    // The "cfg delete" vector: a proxy, nested maps.
    let hex = "83a16192a3636667a177a16482a17092a3776474a174a164d4042da1690a";
    let json = stdout(&moat(&["wire", "decode", hex]));
    assert!(json.contains("\"$proxy\": \"-\""), "{json}");
    let back = stdout(&moat(&["wire", "encode", &json]));
    assert_eq!(back.trim(), hex);
}

#[test]
fn encode_accepts_plain_objects_in_key_order() {
    let out = stdout(&moat(&[
        "wire",
        "encode",
        r#"{"a": ["fs", "ls"], "d": {"p": ""}, "i": 2}"#,
    ]));
    assert_eq!(out.trim(), "83a16192a26673a26c73a16481a170a0a16902");
}

#[test]
fn decode_accepts_hex_dumps_with_spaces_and_colons() {
    let out = stdout(&moat(&["wire", "decode", "81:a1:69 06"]));
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json, serde_json::json!({"$map": [["i", 6]]}));
}

#[test]
fn bad_msgpack_names_the_offset_and_fails() {
    let out = moat(&["wire", "decode", "92 01 c1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("byte 2"), "{err}");
    assert!(err.contains("0xc1"), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn truncated_input_is_reported_not_printed() {
    let out = moat(&["wire", "decode", "83a164ca41ac"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("incomplete"), "{err}");
}

#[test]
fn bad_notation_names_the_json_path_and_fails() {
    let out = moat(&["wire", "encode", r#"{"$map": [["d", {"$bin": "xyz"}]]}"#]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/$map/0/1/$bin"), "{err}");
}
