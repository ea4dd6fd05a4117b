//! `moat wire`: encode/decode MsgPack in the vectors' JSON notation, for
//! reading captured traffic and writing test messages by hand.

use anyhow::{bail, Context};
use mux_runtime::msgpack::{self, Limits};
use mux_runtime::notation;
use std::io::Read;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Decode hex bytes and print each value as JSON (vector notation).
    ///
    /// Whitespace, colons and a leading 0x are ignored, so a hex dump can be
    /// pasted as is. Back-to-back values are printed one after another;
    /// `-` reads the hex from stdin.
    Decode { hex: String },
    /// Encode a JSON value (vector notation) and print the hex; `-` reads stdin.
    ///
    /// Example: moat wire encode '{"a": ["ping"], "d": {"m": "hi"}, "i": 2}'
    Encode { json: String },
}

pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Decode { hex } => {
            for json in decode(&text_or_stdin(hex, "hex")?)? {
                println!("{}", serde_json::to_string_pretty(&json)?);
            }
        }
        Command::Encode { json } => {
            println!("{}", encode(&text_or_stdin(json, "JSON")?)?);
        }
    }
    Ok(())
}

/// The argument, or stdin when it is `-`.
fn text_or_stdin(arg: String, what: &str) -> anyhow::Result<String> {
    if arg != "-" {
        return Ok(arg);
    }
    let mut s = String::new();
    std::io::stdin()
        .read_to_string(&mut s)
        .with_context(|| format!("reading {what} from stdin"))?;
    Ok(s)
}

/// Hex text as bytes, ignoring whitespace, colons and `0x` prefixes.
fn parse_hex(text: &str) -> anyhow::Result<Vec<u8>> {
    let cleaned: String = text
        .split(|c: char| c.is_whitespace() || c == ':')
        .map(|chunk| chunk.strip_prefix("0x").unwrap_or(chunk))
        .collect();
    if let Some((pos, c)) = cleaned.char_indices().find(|(_, c)| !c.is_ascii_hexdigit()) {
        bail!(
            "not hex: {c:?} at hex digit {pos} (expected 0-9, a-f; spaces and colons are ignored)"
        );
    }
    if !cleaned.len().is_multiple_of(2) {
        bail!(
            "odd number of hex digits ({}): every byte needs two digits",
            cleaned.len()
        );
    }
    Ok(hex::decode(&cleaned)?)
}

/// Decodes every value in the hex input, in vector notation.
fn decode(text: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    let bytes = parse_hex(text)?;
    if bytes.is_empty() {
        bail!("no bytes to decode");
    }
    let limits = Limits::default();
    let mut values = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        match msgpack::decode(&bytes[pos..], &limits) {
            Ok(Some((value, used))) => {
                values.push(notation::to_json(&value));
                pos += used;
            }
            Ok(None) => bail!(
                "incomplete MsgPack: the value starting at byte {pos} needs more than the {} bytes left",
                bytes.len() - pos
            ),
            Err(mut e) => {
                e.offset += pos;
                bail!("invalid MsgPack at {e}");
            }
        }
    }
    Ok(values)
}

/// Encodes JSON in vector notation as lowercase hex.
fn encode(json: &str) -> anyhow::Result<String> {
    let value = notation::from_json_str(json).context("invalid value notation")?;
    Ok(hex::encode(msgpack::to_vec(&value)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_dumps_with_spaces_colons_and_prefixes_are_accepted() {
        assert_eq!(
            parse_hex("81 a1:69\n0x06").unwrap(),
            [0x81, 0xa1, 0x69, 0x06]
        );
        assert!(parse_hex("8")
            .unwrap_err()
            .to_string()
            .contains("odd number"));
        assert!(parse_hex("zz").unwrap_err().to_string().contains("not hex"));
    }

    #[test]
    fn back_to_back_values_decode_in_order() {
        let out = decode("01 02").unwrap();
        assert_eq!(out, [serde_json::json!(1), serde_json::json!(2)]);
    }

    #[test]
    fn errors_in_later_values_count_from_the_input_start() {
        let err = decode("01 92 01 c1").unwrap_err().to_string();
        assert!(err.contains("byte 3"), "{err}");
        let err = decode("01 92 01").unwrap_err().to_string();
        assert!(err.contains("starting at byte 1"), "{err}");
    }
}
