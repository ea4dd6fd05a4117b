//! How the client verbs show [`Value`]s.
//!
//! **Human output** ([`human`]) reads like Python with YAML's light
//! quoting: `None`, `True`, `False`, `1.5`, `b'\x00ab'`, `[1, 2]`,
//! `{m: hi}`. A string is written bare when the argument parser
//! ([`crate::args::parse_value`]) would read it back as the same string,
//! else in double quotes with JSON escapes; so anything printed can be
//! pasted back as a `k=v` value. Short values stay on one line; longer
//! maps and arrays break into indented lines.
//!
//! **`--json` output** ([`json`]) is plain JSON, the mapping a `jq` user
//! expects: maps with string keys are objects (in the node's order),
//! arrays are arrays, floats are numbers written with a fraction or
//! exponent (`1.0`). Only what JSON cannot say uses the vector notation's
//! one-key objects: bytes `{"$bin": "00ff"}`, proxies `{"$proxy": "name"}`,
//! maps with non-string keys (or keys starting with `$`) `{"$map": [[k,
//! v], …]}`, non-finite floats `{"$float": "nan"}`, other extension
//! types `{"$ext": [type, "hex"]}`. The result is therefore also valid
//! vector notation: [`mux_runtime::notation::from_json`] reads it back to
//! the exact value.

use mux_runtime::Value;
use serde_json::{Map as JsonMap, Number, Value as Json};

/// Width within which a value is kept on one line.
pub const WIDTH: usize = 80;
const INDENT: &str = "  ";

/// The human rendering of `v` (no trailing newline).
pub fn human(v: &Value) -> String {
    let mut out = String::new();
    pretty(v, 0, &mut out);
    out
}

/// The one-line human rendering of `v`.
pub fn human_compact(v: &Value) -> String {
    let mut out = String::new();
    compact(v, &mut out);
    out
}

fn pretty(v: &Value, level: usize, out: &mut String) {
    let one_line = human_compact(v);
    let budget = WIDTH.saturating_sub(level * INDENT.len());
    let broken = match v {
        Value::Array(items) if one_line.len() > budget && !items.is_empty() => {
            out.push_str("[\n");
            for item in items {
                push_indent(out, level + 1);
                pretty(item, level + 1, out);
                out.push_str(",\n");
            }
            true
        }
        Value::Map(pairs) if one_line.len() > budget && !pairs.is_empty() => {
            out.push_str("{\n");
            for (k, item) in pairs {
                push_indent(out, level + 1);
                compact(k, out);
                out.push_str(": ");
                pretty(item, level + 1, out);
                out.push_str(",\n");
            }
            true
        }
        _ => false,
    };
    if broken {
        push_indent(out, level);
        out.push(if matches!(v, Value::Array(_)) {
            ']'
        } else {
            '}'
        });
    } else {
        out.push_str(&one_line);
    }
}

fn push_indent(out: &mut String, level: usize) {
    for _ in 0..level {
        out.push_str(INDENT);
    }
}

fn compact(v: &Value, out: &mut String) {
    match v {
        Value::Nil => out.push_str("None"),
        Value::Bool(b) => out.push_str(if *b { "True" } else { "False" }),
        Value::Int(i) => out.push_str(&i.to_string()),
        Value::Float(x) => out.push_str(&float(*x)),
        Value::Str(s) => string(s, out),
        Value::Bin(b) => bytes(b, out),
        Value::Array(items) => {
            out.push('[');
            for (n, item) in items.iter().enumerate() {
                if n > 0 {
                    out.push_str(", ");
                }
                compact(item, out);
            }
            out.push(']');
        }
        Value::Map(pairs) => {
            out.push('{');
            for (n, (k, item)) in pairs.iter().enumerate() {
                if n > 0 {
                    out.push_str(", ");
                }
                compact(k, out);
                out.push_str(": ");
                compact(item, out);
            }
            out.push('}');
        }
        Value::Proxy(name) => {
            out.push_str("Proxy(");
            string(name, out);
            out.push(')');
        }
        Value::Ext(ty, data) => {
            out.push_str(&format!("Ext({ty}, "));
            bytes(data, out);
            out.push(')');
        }
    }
}

/// Floats as Python's repr writes them: always with a fraction or an
/// exponent, `inf`, `-inf`, `nan`.
fn float(x: f64) -> String {
    if x.is_nan() {
        "nan".into()
    } else if x.is_infinite() {
        if x > 0.0 { "inf" } else { "-inf" }.into()
    } else {
        // `{:?}` keeps the `.0` and uses the shortest round-trip digits.
        format!("{x:?}")
    }
}

/// Characters a bare string may hold besides letters and digits.
fn bare_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | '@' | '+' | '%' | '=' | ' ')
}

/// A string bare when it reads back as itself, else JSON-quoted.
fn string(s: &str, out: &mut String) {
    let bare = !s.is_empty()
        && s.chars().all(bare_char)
        && s.trim() == s
        && matches!(crate::args::parse_value(s), Ok(Value::Str(ref back)) if back == s);
    if bare {
        out.push_str(s);
    } else {
        out.push_str(&serde_json::to_string(s).expect("strings always serialise"));
    }
}

/// A Python bytes literal: printable ASCII as itself, the rest `\xNN`.
fn bytes(b: &[u8], out: &mut String) {
    out.push_str("b'");
    for &byte in b {
        match byte {
            b'\\' => out.push_str("\\\\"),
            b'\'' => out.push_str("\\'"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0x20..=0x7e => out.push(byte as char),
            _ => out.push_str(&format!("\\x{byte:02x}")),
        }
    }
    out.push('\'');
}

/// The `--json` form of `v` (see the module documentation).
pub fn json(v: &Value) -> Json {
    match v {
        Value::Nil => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Int(i) => {
            if let Ok(n) = i64::try_from(*i) {
                Json::from(n)
            } else if let Ok(n) = u64::try_from(*i) {
                Json::from(n)
            } else {
                tagged("$int", Json::String(i.to_string()))
            }
        }
        Value::Float(x) => match Number::from_f64(*x) {
            Some(n) => Json::Number(n),
            None => mux_runtime::notation::to_json(v),
        },
        Value::Str(s) => Json::String(s.clone()),
        Value::Array(items) => Json::Array(items.iter().map(json).collect()),
        Value::Map(pairs) => {
            let plain = pairs
                .iter()
                .all(|(k, _)| matches!(k, Value::Str(s) if !s.starts_with('$')));
            let mut obj = JsonMap::with_capacity(pairs.len());
            if plain {
                for (k, item) in pairs {
                    let key = k.as_str().unwrap_or_default().to_owned();
                    if obj.insert(key, json(item)).is_some() {
                        // A duplicate key: only `$map` keeps both.
                        return map_notation(pairs);
                    }
                }
                Json::Object(obj)
            } else {
                map_notation(pairs)
            }
        }
        Value::Bin(_) | Value::Proxy(_) | Value::Ext(..) => mux_runtime::notation::to_json(v),
    }
}

fn map_notation(pairs: &[(Value, Value)]) -> Json {
    tagged(
        "$map",
        Json::Array(
            pairs
                .iter()
                .map(|(k, v)| Json::Array(vec![json(k), json(v)]))
                .collect(),
        ),
    )
}

fn tagged(tag: &str, inner: Json) -> Json {
    let mut m = JsonMap::new();
    m.insert(tag.to_owned(), inner);
    Json::Object(m)
}

/// `v` as one line of JSON text.
pub fn json_line(v: &Value) -> String {
    json(v).to_string()
}

/// The `--json` form of a failed request: `{"error": {"type": "_NPErr",
/// "args": [...], "message": "no such command path ..."}}` (`type` is
/// null for errors that are not proxies).
pub fn json_error(e: &mux_runtime::error::RemoteError) -> Json {
    use mux_runtime::error::RemoteError;
    let ty = match e {
        RemoteError::WellKnown { kind, .. } => Json::from(kind.wire_name()),
        RemoteError::Named { name, .. } => Json::from(name.as_str()),
        RemoteError::Generic(_) => Json::Null,
    };
    serde_json::json!({
        "error": {
            "type": ty,
            "args": Json::Array(e.args().iter().map(json).collect()),
            "message": e.to_string(),
        }
    })
}
