//! Command-line arguments of the client verbs: dotted command paths and
//! `key=value` keyword arguments.
//!
//! Values are read like YAML/JSON scalars, so the common cases need no
//! quoting in the shell:
//!
//! | written | value |
//! |---|---|
//! | `5`, `-3`, `0x1f`, `0o17`, `0b101` | int |
//! | `1.5`, `1e3`, `.5`, `inf`, `-inf`, `nan` (`.inf`, `.nan`) | float |
//! | `true` `false` (`True` `False`) | bool |
//! | `null` `~` (`None`) | nil |
//! | `"a\tb"` (JSON escapes), `'it''s'` (YAML single quotes) | str |
//! | `b'\x00ab'` (Python bytes literal) | bin |
//! | `[1, a, "b"]`, `{a: 1, b: [x]}` (JSON or YAML flow) | array, map |
//! | `{"$bin": "00ff"}`, `{"$proxy": "-"}` (JSON vector notation) | bin, proxy, … |
//! | anything else, e.g. `hi`, `/lib/x.py`, empty | str |
//!
//! A value that starts like a collection or a quoted string but does not
//! parse is an error, not a string: a typo should not be sent silently.
//! [`crate::render::human`] writes values in the same notation, so output
//! can be pasted back as input.

use mux_runtime::message::{Path, PathElem};
use mux_runtime::{notation, Value};
use std::fmt;

/// A command-line argument that could not be understood: what and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArgError {
    /// The argument as given.
    pub arg: String,
    /// What is wrong and what would be valid.
    pub problem: String,
}

impl fmt::Display for ArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "argument `{}`: {}", self.arg, self.problem)
    }
}

impl std::error::Error for ArgError {}

fn arg_error(arg: &str, problem: impl Into<String>) -> ArgError {
    ArgError {
        arg: arg.to_owned(),
        problem: problem.into(),
    }
}

/// Largest and smallest integers MsgPack can carry.
const INT_MAX: i128 = u64::MAX as i128;
const INT_MIN: i128 = i64::MIN as i128;

/// Parses a dotted command path: `sys.info` → `["sys", "info"]`; segments
/// that are integers index arrays (`sensors.3.r`).
pub fn parse_path(dotted: &str) -> Result<Path, ArgError> {
    if dotted.is_empty() {
        return Err(arg_error(
            dotted,
            "empty command path; give one such as `dir`, `ping` or `sys.info`",
        ));
    }
    dotted
        .split('.')
        .map(|seg| {
            if seg.is_empty() {
                Err(arg_error(
                    dotted,
                    "empty path segment: write segments separated by single dots, e.g. `sys.info`",
                ))
            } else if let Ok(i) = seg.parse::<i64>() {
                Ok(PathElem::Index(i))
            } else {
                Ok(PathElem::Name(seg.to_owned()))
            }
        })
        .collect()
}

/// Writes a path the way [`parse_path`] reads it.
pub fn show_path(path: &[PathElem]) -> String {
    path.iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(".")
}

/// Parses one `key=value` argument.
pub fn parse_kv(arg: &str) -> Result<(String, Value), ArgError> {
    let Some((key, value)) = arg.split_once('=') else {
        return Err(arg_error(
            arg,
            "expected `key=value` (e.g. `m=hi`, `n=5`, `p='[a, b]'`)",
        ));
    };
    if key.is_empty() {
        return Err(arg_error(arg, "the key before `=` is empty"));
    }
    if !is_identifier(key) {
        return Err(arg_error(
            arg,
            format!("`{key}` is not a keyword name: use letters, digits and `_`, not starting with a digit"),
        ));
    }
    let value = parse_value(value).map_err(|e| arg_error(arg, e.problem))?;
    Ok((key.to_owned(), value))
}

/// Parses `key=value` arguments into the keyword-argument map of a request,
/// in the order given. A key given twice is an error.
pub fn parse_kwargs<S: AsRef<str>>(args: &[S]) -> Result<Value, ArgError> {
    let mut pairs: Vec<(Value, Value)> = Vec::with_capacity(args.len());
    for arg in args {
        let arg = arg.as_ref();
        let (k, v) = parse_kv(arg)?;
        if pairs.iter().any(|(pk, _)| pk.as_str() == Some(&k)) {
            return Err(arg_error(arg, format!("`{k}` is given twice")));
        }
        pairs.push((Value::Str(k), v));
    }
    Ok(Value::Map(pairs))
}

/// The positional arguments of `moat cmd`, sorted out: `[NODE] PATH
/// [k=v …]`. The node may come first (`moat cmd pump sys.dir`) or from
/// `--node`; without either it is left for the project to choose.
#[derive(Clone, Debug, PartialEq)]
pub struct CmdArgs {
    pub node: Option<String>,
    pub path: Path,
    pub kwargs: Value,
}

/// Splits `moat cmd`'s positionals. The words before the first `k=v` are
/// `PATH` or `NODE PATH`.
pub fn parse_cmd<S: AsRef<str>>(node_flag: Option<&str>, words: &[S]) -> Result<CmdArgs, ArgError> {
    let words: Vec<&str> = words.iter().map(AsRef::as_ref).collect();
    let lead = words.iter().take_while(|w| !w.contains('=')).count();
    let (node, path, rest) = match (lead, node_flag) {
        (0, _) => {
            return Err(arg_error(
                words.first().copied().unwrap_or(""),
                "missing the command path before the `key=value` arguments (e.g. `moat cmd ping m=hi`)",
            ))
        }
        (1, flag) => (flag.map(str::to_owned), words[0], &words[1..]),
        (2, None) => (Some(words[0].to_owned()), words[1], &words[2..]),
        (2, Some(flag)) => {
            return Err(arg_error(
                words[0],
                format!("the node is already given with --node {flag}; write `moat cmd --node {flag} PATH k=v …`"),
            ))
        }
        (_, _) => {
            return Err(arg_error(
                words[2],
                "expected `key=value` after the command path (usage: moat cmd [NODE] PATH [k=v …])",
            ))
        }
    };
    Ok(CmdArgs {
        node,
        path: parse_path(path)?,
        kwargs: parse_kwargs(rest)?,
    })
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_alphabetic())
        && chars.all(|c| c == '_' || c.is_alphanumeric())
}

/// Parses one value (the part after `=`).
pub fn parse_value(text: &str) -> Result<Value, ArgError> {
    let trimmed = text.trim();
    match trimmed.chars().next() {
        Some('[' | '{') => {
            // Exact JSON first (it may use the vector notation's `$` tags),
            // then the YAML flow style, which needs fewer shell quotes.
            if let Ok(json) = serde_json::from_str::<serde_json::Value>(trimmed) {
                return notation::from_json(&json)
                    .map_err(|e| arg_error(text, format!("invalid vector notation {e}")));
            }
            let mut p = Flow {
                src: trimmed,
                pos: 0,
            };
            let v = p.collection().map_err(|m| arg_error(text, m))?;
            p.skip_ws();
            if p.pos != trimmed.len() {
                return Err(arg_error(
                    text,
                    format!("unexpected text after the value at column {}", p.pos + 1),
                ));
            }
            Ok(v)
        }
        _ => scalar(trimmed).map_err(|m| arg_error(text, m)),
    }
}

/// One scalar: quoted string, bytes literal, number, bool, nil or a plain
/// string.
fn scalar(s: &str) -> Result<Value, String> {
    if s.starts_with('"') {
        return serde_json::from_str::<String>(s)
            .map(Value::Str)
            .map_err(|e| format!("bad double-quoted string ({e}); JSON escapes apply"));
    }
    if let Some(inner) = s.strip_prefix('\'') {
        return single_quoted(inner).map(Value::Str);
    }
    if let Some(inner) = s.strip_prefix("b'").or_else(|| s.strip_prefix("b\"")) {
        return bytes_literal(s, inner).map(Value::Bin);
    }
    if let Some(v) = wrapped(s)? {
        return Ok(v);
    }
    Ok(match s {
        "null" | "Null" | "NULL" | "~" | "None" => Value::Nil,
        "true" | "True" | "TRUE" => Value::Bool(true),
        "false" | "False" | "FALSE" => Value::Bool(false),
        "inf" | "+inf" | ".inf" | "+.inf" | ".Inf" => Value::Float(f64::INFINITY),
        "-inf" | "-.inf" | "-.Inf" => Value::Float(f64::NEG_INFINITY),
        "nan" | ".nan" | ".NaN" => Value::Float(f64::NAN),
        _ => match number(s)? {
            Some(v) => v,
            None => Value::Str(s.to_owned()),
        },
    })
}

/// `Proxy(NAME)` and `Ext(TYPE, b'…')` as [`crate::render::human`] prints
/// them (so a printed proxy can be pasted back); `None` for anything else.
fn wrapped(s: &str) -> Result<Option<Value>, String> {
    if let Some(inner) = s.strip_prefix("Proxy(").and_then(|r| r.strip_suffix(')')) {
        return match scalar(inner.trim())? {
            Value::Str(name) if !name.is_empty() => Ok(Some(Value::Proxy(name))),
            _ => Err(format!(
                "`{s}`: a proxy's name is a string, e.g. `Proxy(p1)` or `Proxy('-')`"
            )),
        };
    }
    if let Some(inner) = s.strip_prefix("Ext(").and_then(|r| r.strip_suffix(')')) {
        let usage =
            || format!("`{s}`: write an extension value as `Ext(TYPE, b'…')`, TYPE -128..=127");
        let (ty, data) = inner.split_once(',').ok_or_else(usage)?;
        let ty: i8 = ty.trim().parse().map_err(|_| usage())?;
        let Value::Bin(data) = scalar(data.trim())? else {
            return Err(usage());
        };
        return Ok(Some(Value::Ext(ty, data)));
    }
    Ok(None)
}

/// `Some` when `s` is written as a number; an int outside MsgPack's range
/// is an error.
fn number(s: &str) -> Result<Option<Value>, String> {
    let (neg, body) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let radix = match body.get(..2) {
        Some("0x" | "0X") => Some(16),
        Some("0o" | "0O") => Some(8),
        Some("0b" | "0B") => Some(2),
        _ => None,
    };
    let int = |digits: &str, radix: u32| -> Result<Option<Value>, String> {
        let Ok(mag) = u128::from_str_radix(digits, radix) else {
            return Err(format!(
                "{s} does not fit in a MsgPack integer ({INT_MIN} ..= {INT_MAX})"
            ));
        };
        let v = if neg { -(mag as i128) } else { mag as i128 };
        if mag > i128::MAX as u128 || !(INT_MIN..=INT_MAX).contains(&v) {
            return Err(format!(
                "{s} does not fit in a MsgPack integer ({INT_MIN} ..= {INT_MAX})"
            ));
        }
        Ok(Some(Value::Int(v)))
    };
    if let Some(radix) = radix {
        let digits = &body[2..];
        if !digits.is_empty() && digits.chars().all(|c| c.is_digit(radix)) {
            return int(digits, radix);
        }
        return Ok(None);
    }
    if !body.is_empty() && body.bytes().all(|b| b.is_ascii_digit()) {
        return int(body, 10);
    }
    if is_decimal_float(body) {
        return Ok(s.parse::<f64>().ok().map(Value::Float));
    }
    Ok(None)
}

/// `digits[.digits][e[+-]digits]` with at least one digit before the
/// exponent, and a `.` or an exponent (else it is an int).
fn is_decimal_float(s: &str) -> bool {
    let (mantissa, exp) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let (int, frac) = match mantissa.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (mantissa, None),
    };
    let digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    let has_digit = !int.is_empty() || frac.is_some_and(|f| !f.is_empty());
    let exp_ok = match exp {
        None => true,
        Some(e) => {
            let e = e.strip_prefix(['+', '-']).unwrap_or(e);
            !e.is_empty() && digits(e)
        }
    };
    has_digit
        && digits(int)
        && frac.is_none_or(digits)
        && exp_ok
        && (frac.is_some() || exp.is_some())
}

/// The rest of a YAML single-quoted string (after the opening quote):
/// `''` is a quote; nothing else is an escape.
fn single_quoted(inner: &str) -> Result<String, String> {
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\'' {
            if chars.peek() == Some(&'\'') {
                chars.next();
                out.push('\'');
            } else if chars.peek().is_none() {
                return Ok(out);
            } else {
                return Err("text after the closing quote (write '' for a quote inside)".into());
            }
        } else {
            out.push(c);
        }
    }
    Err("missing the closing ' of a single-quoted string".into())
}

/// A Python bytes literal's body (after `b'`/`b"`): ASCII characters and
/// `\xNN`, `\\`, `\'`, `\"`, `\n`, `\r`, `\t`, `\0` escapes.
fn bytes_literal(whole: &str, inner: &str) -> Result<Vec<u8>, String> {
    let quote = whole.as_bytes()[1];
    let bytes = inner.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == quote {
            if i + 1 != bytes.len() {
                return Err("text after the closing quote of a bytes literal".into());
            }
            return Ok(out);
        }
        if b == b'\\' {
            let Some(&e) = bytes.get(i + 1) else { break };
            let (byte, used) = match e {
                b'x' => {
                    let hex = inner
                        .get(i + 2..i + 4)
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                        .ok_or("`\\x` must be followed by two hex digits")?;
                    (hex, 4)
                }
                b'\\' | b'\'' | b'"' => (e, 2),
                b'n' => (b'\n', 2),
                b'r' => (b'\r', 2),
                b't' => (b'\t', 2),
                b'0' => (0, 2),
                other => {
                    return Err(format!(
                        "unknown escape `\\{}` in a bytes literal (use \\xNN)",
                        other as char
                    ))
                }
            };
            out.push(byte);
            i += used;
        } else if b.is_ascii() && !b.is_ascii_control() {
            out.push(b);
            i += 1;
        } else {
            return Err("a bytes literal holds ASCII only; write other bytes as \\xNN".into());
        }
    }
    Err(format!(
        "missing the closing {} of a bytes literal",
        quote as char
    ))
}

/// A small recursive-descent reader for YAML flow collections:
/// `[a, 1, {k: v}]`. Plain scalars run to the next `,`, `]`, `}` (or `: `
/// for keys) and are read with [`scalar`].
struct Flow<'a> {
    src: &'a str,
    pos: usize,
}

/// Nesting allowed in a flow value (the wire's decoder allows 32).
const MAX_DEPTH: usize = 32;

impl Flow<'_> {
    fn rest(&self) -> &str {
        &self.src[self.pos..]
    }

    fn skip_ws(&mut self) {
        let rest = self.rest();
        self.pos += rest.len() - rest.trim_start().len();
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.pos += c.len_utf8();
            true
        } else {
            false
        }
    }

    fn at(&self) -> String {
        format!("column {}", self.pos + 1)
    }

    fn collection(&mut self) -> Result<Value, String> {
        self.value(0)
    }

    fn value(&mut self, depth: usize) -> Result<Value, String> {
        if depth > MAX_DEPTH {
            return Err(format!("nested deeper than {MAX_DEPTH} levels"));
        }
        self.skip_ws();
        match self.peek() {
            Some('[') => {
                self.pos += 1;
                let mut items = Vec::new();
                loop {
                    self.skip_ws();
                    if self.eat(']') {
                        return Ok(Value::Array(items));
                    }
                    items.push(self.value(depth + 1)?);
                    self.skip_ws();
                    if self.eat(',') {
                        continue;
                    }
                    if self.eat(']') {
                        return Ok(Value::Array(items));
                    }
                    return Err(format!("expected `,` or `]` at {}", self.at()));
                }
            }
            Some('{') => {
                self.pos += 1;
                let mut pairs = Vec::new();
                loop {
                    self.skip_ws();
                    if self.eat('}') {
                        return Ok(Value::Map(pairs));
                    }
                    let key = self.item(true)?;
                    self.skip_ws();
                    if !self.eat(':') {
                        return Err(format!("expected `:` after a map key at {}", self.at()));
                    }
                    let value = self.value(depth + 1)?;
                    pairs.push((key, value));
                    self.skip_ws();
                    if self.eat(',') {
                        continue;
                    }
                    if self.eat('}') {
                        return Ok(Value::Map(pairs));
                    }
                    return Err(format!("expected `,` or `}}` at {}", self.at()));
                }
            }
            Some(_) => self.item(false),
            None => Err("unexpected end of the value".into()),
        }
    }

    /// A scalar inside a collection (quoted or plain).
    fn item(&mut self, is_key: bool) -> Result<Value, String> {
        let src = self.src;
        let rest = &src[self.pos..];
        let len = if rest.starts_with('"') {
            quoted_len(rest, '"', true)
        } else if rest.starts_with('\'') {
            quoted_len(rest, '\'', false)
        } else if rest.starts_with("Ext(") {
            // its `, ` is not the collection's: up to the closing `)`
            rest.find(')').map(|i| i + 1)
        } else if rest.starts_with("b'") || rest.starts_with("b\"") {
            quoted_len(&rest[1..], rest.as_bytes()[1] as char, true).map(|n| n + 1)
        } else {
            Some(plain_len(rest, is_key))
        }
        .ok_or_else(|| format!("unterminated quoted string at {}", self.at()))?;
        let text = rest[..len].trim_end();
        if text.is_empty() {
            return Err(format!("expected a value at {}", self.at()));
        }
        self.pos += len;
        scalar(text).map_err(|m| format!("{m} (at column {})", self.pos - len + 1))
    }
}

/// Length of a quoted string at the start of `s`, quotes included.
fn quoted_len(s: &str, quote: char, backslash: bool) -> Option<usize> {
    let mut chars = s.char_indices().skip(1);
    while let Some((i, c)) = chars.next() {
        if backslash && c == '\\' {
            chars.next();
        } else if c == quote {
            // YAML's '' inside single quotes.
            if !backslash && s[i + 1..].starts_with(quote) {
                chars.next();
                continue;
            }
            return Some(i + 1);
        }
    }
    None
}

/// Length of a plain scalar: up to `,`, `]`, `}`, or for a key `:`.
fn plain_len(s: &str, is_key: bool) -> usize {
    s.char_indices()
        .find(|&(i, c)| {
            matches!(c, ',' | ']' | '}' | '[' | '{')
                || (c == ':'
                    && (is_key || s[i + 1..].starts_with(char::is_whitespace) || i + 1 == s.len()))
        })
        .map_or(s.len(), |(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_words_stay_strings() {
        assert_eq!(parse_value("hi").unwrap(), Value::from("hi"));
        assert_eq!(parse_value("").unwrap(), Value::from(""));
        assert_eq!(parse_value("/lib/x.py").unwrap(), Value::from("/lib/x.py"));
        assert_eq!(parse_value("1.2.3").unwrap(), Value::from("1.2.3"));
        assert_eq!(parse_value("0x").unwrap(), Value::from("0x"));
        assert_eq!(parse_value("e5").unwrap(), Value::from("e5"));
    }

    #[test]
    fn printed_proxies_and_exts_read_back() {
        for v in [
            Value::Proxy("p1".into()),
            Value::Proxy("-".into()),
            Value::Proxy("it's".into()),
            Value::Ext(5, vec![0, 0xff, b'a']),
            Value::Array(vec![
                Value::Proxy("p2".into()),
                Value::Ext(-3, vec![1]),
                1.into(),
            ]),
            Value::map([("p", Value::Proxy("_sec".into()))]),
        ] {
            let printed = crate::render::human(&v);
            assert_eq!(parse_value(&printed).unwrap(), v, "{printed}");
        }
        assert!(parse_value("Proxy()").is_err());
        assert!(parse_value("Ext(x, b'')").is_err());
    }
}
