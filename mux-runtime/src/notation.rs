//! The vectors' JSON notation for [`Value`]s, also used by `moat wire`.
//!
//! JSON cannot say "ordered map with non-string keys", "bytes" or "float
//! that happens to be integral", so a few one-key objects stand in:
//!
//! | JSON | Value |
//! |---|---|
//! | `{"$map": [[k, v], …]}` | ordered map, any key type |
//! | `{"$bin": "00ff"}` | bytes |
//! | `{"$proxy": "name"}` | ext-4 proxy |
//! | `{"$float": 1.0}` (or `"nan"`, `"inf"`, `"-inf"`) | float |
//! | `{"$ext": [type, "hex"]}` | other extension type |
//! | `{"$int": "…"}` | an integer JSON numbers cannot hold |
//!
//! On input, a plain object (no `$` keys) is a map with string keys in
//! order, integral JSON numbers are ints and others are floats. On output
//! every map is `$map` and every float `$float`, so the JSON is exact.

use serde_json::{Map as JsonMap, Number, Value as Json};
use std::fmt;

use crate::value::{Value, PROXY_EXT};

/// Why a JSON document is not valid vector notation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotationError {
    /// JSON-pointer-like location, e.g. `/$map/0/1`; empty for the root.
    pub path: String,
    pub problem: String,
}

impl fmt::Display for NotationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = if self.path.is_empty() {
            "/"
        } else {
            &self.path
        };
        write!(f, "at {at}: {}", self.problem)
    }
}

impl std::error::Error for NotationError {}

/// Reads a value written in vector notation.
pub fn from_json(json: &Json) -> Result<Value, NotationError> {
    let mut path = String::new();
    read(json, &mut path)
}

/// Parses JSON text in vector notation.
pub fn from_json_str(text: &str) -> Result<Value, NotationError> {
    let json: Json = serde_json::from_str(text).map_err(|e| NotationError {
        path: String::new(),
        problem: format!("not valid JSON: {e}"),
    })?;
    from_json(&json)
}

/// Writes a value in vector notation (every map as `$map`, floats as `$float`).
pub fn to_json(v: &Value) -> Json {
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
        Value::Float(x) => tagged("$float", float_json(*x)),
        Value::Str(s) => Json::String(s.clone()),
        Value::Bin(b) => tagged("$bin", Json::String(hex::encode(b))),
        Value::Array(items) => Json::Array(items.iter().map(to_json).collect()),
        Value::Map(pairs) => tagged(
            "$map",
            Json::Array(
                pairs
                    .iter()
                    .map(|(k, v)| Json::Array(vec![to_json(k), to_json(v)]))
                    .collect(),
            ),
        ),
        Value::Proxy(name) => tagged("$proxy", Json::String(name.clone())),
        Value::Ext(ty, data) => tagged(
            "$ext",
            Json::Array(vec![Json::from(*ty), Json::String(hex::encode(data))]),
        ),
    }
}

fn tagged(tag: &str, inner: Json) -> Json {
    let mut m = JsonMap::new();
    m.insert(tag.to_owned(), inner);
    Json::Object(m)
}

fn float_json(x: f64) -> Json {
    match Number::from_f64(x) {
        Some(n) => Json::Number(n),
        None if x.is_nan() => Json::String("nan".into()),
        None if x > 0.0 => Json::String("inf".into()),
        None => Json::String("-inf".into()),
    }
}

fn fail<T>(path: &str, problem: impl Into<String>) -> Result<T, NotationError> {
    Err(NotationError {
        path: path.to_owned(),
        problem: problem.into(),
    })
}

/// Runs `f` with `seg` appended to `path`, restoring it afterwards.
fn at<T>(
    path: &mut String,
    seg: impl fmt::Display,
    f: impl FnOnce(&mut String) -> Result<T, NotationError>,
) -> Result<T, NotationError> {
    let len = path.len();
    path.push('/');
    path.push_str(&seg.to_string());
    let out = f(path);
    path.truncate(len);
    out
}

fn json_type(j: &Json) -> &'static str {
    match j {
        Json::Null => "null",
        Json::Bool(_) => "bool",
        Json::Number(_) => "number",
        Json::String(_) => "string",
        Json::Array(_) => "array",
        Json::Object(_) => "object",
    }
}

fn read(json: &Json, path: &mut String) -> Result<Value, NotationError> {
    Ok(match json {
        Json::Null => Value::Nil,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => number(n),
        Json::String(s) => Value::Str(s.clone()),
        Json::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(n, item)| at(path, n, |p| read(item, p)))
                .collect::<Result<_, _>>()?,
        ),
        Json::Object(obj) => object(obj, path)?,
    })
}

fn number(n: &Number) -> Value {
    if let Some(i) = n.as_i64() {
        Value::Int(i.into())
    } else if let Some(u) = n.as_u64() {
        Value::Int(u.into())
    } else {
        // Without arbitrary_precision every other JSON number is an f64.
        Value::Float(n.as_f64().unwrap_or(f64::NAN))
    }
}

fn object(obj: &JsonMap<String, Json>, path: &mut String) -> Result<Value, NotationError> {
    let tag = obj.keys().find(|k| k.starts_with('$'));
    let Some(tag) = tag else {
        return Ok(Value::Map(
            obj.iter()
                .map(|(k, v)| Ok((Value::Str(k.clone()), at(path, k, |p| read(v, p))?)))
                .collect::<Result<_, _>>()?,
        ));
    };
    if obj.len() != 1 {
        return fail(
            path,
            format!("`{tag}` must be the object's only key (write other members inside it)"),
        );
    }
    let inner = &obj[tag];
    at(path, tag, |p| match tag.as_str() {
        "$map" => map(inner, p),
        "$bin" => Ok(Value::Bin(hex_str(inner, p)?)),
        "$proxy" => match inner {
            Json::String(s) => Ok(Value::Proxy(s.clone())),
            other => fail(
                p,
                format!(
                    "expected the proxy name as a string, got {}",
                    json_type(other)
                ),
            ),
        },
        "$float" => float(inner, p),
        "$int" => int(inner, p),
        "$ext" => ext(inner, p),
        other => fail(
            p,
            format!("unknown notation `{other}` (known: $map, $bin, $proxy, $float, $ext, $int)"),
        ),
    })
}

fn map(inner: &Json, path: &mut String) -> Result<Value, NotationError> {
    let Json::Array(pairs) = inner else {
        return fail(
            path,
            format!(
                "expected an array of [key, value] pairs, got {}",
                json_type(inner)
            ),
        );
    };
    let pairs = pairs
        .iter()
        .enumerate()
        .map(|(n, pair)| {
            at(path, n, |p| match pair {
                Json::Array(kv) if kv.len() == 2 => {
                    let k = at(p, 0, |p| read(&kv[0], p))?;
                    let v = at(p, 1, |p| read(&kv[1], p))?;
                    Ok((k, v))
                }
                other => fail(
                    p,
                    format!("expected a [key, value] pair, got {}", describe(other)),
                ),
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(Value::Map(pairs))
}

fn describe(j: &Json) -> String {
    match j {
        Json::Array(a) => format!("an array of {} elements", a.len()),
        other => json_type(other).to_owned(),
    }
}

fn hex_str(inner: &Json, path: &str) -> Result<Vec<u8>, NotationError> {
    let Json::String(s) = inner else {
        return fail(
            path,
            format!("expected a hex string, got {}", json_type(inner)),
        );
    };
    hex::decode(s).or_else(|e| fail(path, format!("invalid hex {s:?}: {e}")))
}

fn float(inner: &Json, path: &str) -> Result<Value, NotationError> {
    match inner {
        Json::Number(n) => Ok(Value::Float(n.as_f64().unwrap_or(f64::NAN))),
        Json::String(s) => match s.as_str() {
            "nan" | "NaN" => Ok(Value::Float(f64::NAN)),
            "inf" | "Infinity" => Ok(Value::Float(f64::INFINITY)),
            "-inf" | "-Infinity" => Ok(Value::Float(f64::NEG_INFINITY)),
            _ => fail(
                path,
                format!("expected a number, \"nan\", \"inf\" or \"-inf\", got {s:?}"),
            ),
        },
        other => fail(path, format!("expected a number, got {}", json_type(other))),
    }
}

fn int(inner: &Json, path: &str) -> Result<Value, NotationError> {
    let parsed = match inner {
        Json::String(s) => s.parse::<i128>().ok(),
        Json::Number(n) => n.as_i64().map(i128::from).or(n.as_u64().map(i128::from)),
        _ => None,
    };
    match parsed {
        Some(i) => Ok(Value::Int(i)),
        None => fail(
            path,
            format!("expected an integer (as a decimal string), got {inner}"),
        ),
    }
}

fn ext(inner: &Json, path: &mut String) -> Result<Value, NotationError> {
    let Json::Array(parts) = inner else {
        return fail(
            path,
            format!("expected [type, hex], got {}", json_type(inner)),
        );
    };
    let [ty, data] = parts.as_slice() else {
        return fail(
            path,
            format!("expected [type, hex], got {}", describe(inner)),
        );
    };
    let ty = at(path, 0, |p| match ty.as_i64().map(i8::try_from) {
        Some(Ok(t)) => Ok(t),
        _ => fail(
            p,
            format!("expected an extension type in -128..=127, got {ty}"),
        ),
    })?;
    let data = at(path, 1, |p| hex_str(data, p))?;
    // Keep one representation per value: an ext-4 with a UTF-8 name is a proxy.
    if ty == PROXY_EXT {
        if let Ok(name) = std::str::from_utf8(&data) {
            return Ok(Value::Proxy(name.to_owned()));
        }
    }
    Ok(Value::Ext(ty, data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dollar_forms_read_into_their_values() {
        let v = from_json(&json!({"$map": [
            [1, {"$bin": "00ff"}],
            ["p", {"$proxy": "-"}],
            ["f", {"$float": 2}],
            ["x", {"$ext": [9, "0102"]}],
        ]}))
        .unwrap();
        assert_eq!(
            v,
            Value::Map(vec![
                (Value::Int(1), Value::Bin(vec![0, 0xff])),
                ("p".into(), Value::Proxy("-".into())),
                ("f".into(), Value::Float(2.0)),
                ("x".into(), Value::Ext(9, vec![1, 2])),
            ])
        );
    }

    #[test]
    fn plain_objects_are_string_keyed_maps_in_order() {
        let v = from_json_str(r#"{"z": 1, "a": 2.5, "m": [null, true]}"#).unwrap();
        assert_eq!(
            v,
            Value::map([
                ("z", Value::Int(1)),
                ("a", Value::Float(2.5)),
                ("m", Value::Array(vec![Value::Nil, Value::Bool(true)])),
            ])
        );
    }

    #[test]
    fn output_is_exact_and_reads_back() {
        let v = Value::Map(vec![
            ("i".into(), Value::Int(u64::MAX.into())),
            ("f".into(), Value::Float(21.0)),
            ("n".into(), Value::Float(f64::NEG_INFINITY)),
            ("b".into(), Value::Bin(vec![1])),
            ("e".into(), Value::Ext(-3, vec![])),
            ("p".into(), Value::Proxy("_FnErr".into())),
            ("big".into(), Value::Int(-(1i128 << 100))),
        ]);
        let json = to_json(&v);
        assert_eq!(json["$map"][1][1], json!({"$float": 21.0}));
        assert_eq!(json["$map"][2][1], json!({"$float": "-inf"}));
        assert_eq!(from_json(&json).unwrap(), v);
    }

    #[test]
    fn errors_name_the_json_path() {
        let err = from_json(&json!({"$map": [["a", [1, {"$bin": "zz"}]]]})).unwrap_err();
        assert_eq!(err.path, "/$map/0/1/1/$bin");
        assert!(err.to_string().contains("invalid hex"), "{err}");

        let err = from_json(&json!({"k": {"$map": [["a"]]}})).unwrap_err();
        assert_eq!(err.path, "/k/$map/0");
        assert!(err.problem.contains("an array of 1 elements"), "{err}");

        let err = from_json(&json!({"$nope": 1})).unwrap_err();
        assert!(err.problem.contains("unknown notation `$nope`"), "{err}");

        let err = from_json(&json!({"$bin": "00", "x": 1})).unwrap_err();
        assert!(err.problem.contains("only key"), "{err}");
        assert_eq!(err.to_string(), format!("at /: {}", err.problem));
    }

    #[test]
    fn ext_four_with_a_name_is_a_proxy() {
        assert_eq!(
            from_json(&json!({"$ext": [4, "2d"]})).unwrap(),
            Value::Proxy("-".into())
        );
        assert_eq!(
            from_json(&json!({"$ext": [4, "ff"]})).unwrap(),
            Value::Ext(4, vec![0xff])
        );
    }
}
