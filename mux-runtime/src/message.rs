//! The protocol message model (docs/protocol.md: Encoding).
//!
//! A message is one MsgPack map with one-letter keys `a d i e r n x`.
//! [`Message::from_value`] classifies an incoming map exactly as the spec
//! says (`a` → request/unsolicited, else `e` → error, else `r` → stream
//! control, else `d` → reply/stream item, else `i` alone → cancel) and
//! [`Message::to_value`] writes the keys back in the canonical order, which
//! reproduces the normative vectors byte for byte.
//!
//! ```
//! use mux_runtime::message::{Message, Kind};
//! use mux_runtime::Value;
//!
//! let req = Message::request(["fs", "ls"], Value::map([("p", "".into())]), 2);
//! let bytes = req.to_bytes();
//! let back = Message::from_bytes(&bytes).unwrap();
//! assert_eq!(back.kind(), Kind::Request);
//! assert_eq!(back, req);
//! ```

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Mutex;

use crate::error::RemoteError;
use crate::msgpack::{self, DecodeError, Limits};
use crate::seq::{self, Seq};
use crate::value::Value;

/// One element of a command path: a name, or an index (`["sensors", 3, "r"]`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PathElem {
    Name(String),
    Index(i64),
}

impl From<&str> for PathElem {
    fn from(s: &str) -> Self {
        PathElem::Name(s.to_owned())
    }
}
impl From<String> for PathElem {
    fn from(s: String) -> Self {
        PathElem::Name(s)
    }
}
impl From<i64> for PathElem {
    fn from(i: i64) -> Self {
        PathElem::Index(i)
    }
}

impl From<&PathElem> for Value {
    fn from(e: &PathElem) -> Self {
        match e {
            PathElem::Name(s) => Value::Str(s.clone()),
            PathElem::Index(i) => Value::Int((*i).into()),
        }
    }
}

impl fmt::Display for PathElem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathElem::Name(s) => f.write_str(s),
            PathElem::Index(i) => write!(f, "{i}"),
        }
    }
}

/// A command path, e.g. `["fs", "ls"]`.
pub type Path = Vec<PathElem>;

/// Builds a [`Path`] from anything that converts to path elements.
pub fn path<E: Into<PathElem>>(elems: impl IntoIterator<Item = E>) -> Path {
    elems.into_iter().map(Into::into).collect()
}

/// What kind of message a map is (the classification of docs/protocol.md: Encoding).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Request,
    Unsolicited,
    Reply,
    StreamItem,
    StreamEnd,
    Error,
    Cancel,
}

/// One protocol message.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    /// `{a, d, i, r?, x?}`: call `path` with keyword args `data` (a map;
    /// absent or nil on the wire = `{}`); answer with `seq + 1`. `stream`: send a
    /// stream item every that many ms. `expect`: error proxy names the
    /// caller expects, which the responder does not log.
    Request {
        path: Path,
        data: Value,
        seq: Seq,
        stream: Option<u32>,
        expect: Vec<String>,
    },
    /// `{a, d}` without `i`: a fire-and-forget request or an unsolicited
    /// message (same shape). `data` is `Nil` when `d` is absent.
    Unsolicited { path: Path, data: Value },
    /// `{d, i}`: the result of request `seq` (`Nil` for None).
    Reply { seq: Seq, data: Value },
    /// `{d, i, n}`: item number `n` (from 1) of stream `seq`.
    StreamItem { seq: Seq, n: u64, data: Value },
    /// `{i, r: false}`: stream `seq` has ended.
    StreamEnd { seq: Seq },
    /// `{d?, i, e}`: request `seq` failed.
    Error { seq: Seq, error: RemoteError },
    /// `{i}`: stop request or stream `seq`.
    Cancel { seq: Seq },
}

/// Why a value is not a valid message. Names the key and what was expected.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum MessageError {
    #[error("a message must be a map, got {got}")]
    NotAMap { got: &'static str },
    #[error("message key `{key}`: expected {expected}, got {got}")]
    BadKey {
        key: char,
        expected: &'static str,
        got: String,
    },
    #[error("message key `{key}` is missing: {why}")]
    Missing { key: char, why: &'static str },
    #[error("message key `{key}` appears twice")]
    Duplicate { key: char },
    #[error("empty message: it has none of the keys a, d, i, e, r")]
    Empty,
    #[error("not a MsgPack value: {0}")]
    Decode(#[from] DecodeError),
}

fn bad<T>(key: char, expected: &'static str, got: &Value) -> Result<T, MessageError> {
    Err(MessageError::BadKey {
        key,
        expected,
        got: describe(got),
    })
}

/// The value's type, plus the value itself when it is short.
fn describe(v: &Value) -> String {
    let shown = v.to_string();
    if shown.len() <= 40 {
        format!("{} {shown}", v.type_name())
    } else {
        v.type_name().to_owned()
    }
}

/// The keys of one message map, before classification.
#[derive(Default)]
struct Keys {
    a: Option<Value>,
    d: Option<Value>,
    i: Option<Value>,
    e: Option<Value>,
    r: Option<Value>,
    n: Option<Value>,
    x: Option<Value>,
}

impl Keys {
    fn collect(pairs: Vec<(Value, Value)>) -> Result<Keys, MessageError> {
        let mut keys = Keys::default();
        for (k, v) in pairs {
            let slot = match &k {
                Value::Str(s) => match s.as_str() {
                    "a" => &mut keys.a,
                    "d" => &mut keys.d,
                    "i" => &mut keys.i,
                    "e" => &mut keys.e,
                    "r" => &mut keys.r,
                    "n" => &mut keys.n,
                    "x" => &mut keys.x,
                    _ => {
                        log_unknown_key(&k);
                        continue;
                    }
                },
                _ => {
                    log_unknown_key(&k);
                    continue;
                }
            };
            if slot.is_some() {
                let key = k.as_str().and_then(|s| s.chars().next()).unwrap_or('?');
                return Err(MessageError::Duplicate { key });
            }
            *slot = Some(v);
        }
        Ok(keys)
    }
}

/// Unknown keys are ignored but worth one line each: a peer speaking a newer
/// protocol.
fn log_unknown_key(key: &Value) {
    let mut name = key.to_string();
    if name.len() > 40 {
        let cut = (0..=40)
            .rev()
            .find(|&n| name.is_char_boundary(n))
            .unwrap_or(0);
        name.truncate(cut);
    }
    if first_sighting(&name) {
        tracing::info!(key = %name, "ignoring unknown message key (logged once)");
    }
}

/// True the first time `name` is seen. Bounded so a hostile peer cannot grow
/// the set: after 64 distinct names, nothing more is logged.
fn first_sighting(name: &str) -> bool {
    static SEEN: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    seen.len() < 64 && seen.insert(name.to_owned())
}

fn parse_seq(v: &Value) -> Result<Seq, MessageError> {
    match v {
        Value::Int(i) => Seq::try_from(*i).or_else(|_| bad('i', "an int in 0..2^32", v)),
        _ => bad('i', "an int sequence number", v),
    }
}

fn parse_path(v: Value) -> Result<Path, MessageError> {
    match v {
        // A plain string means a one-element path; no dot splitting.
        Value::Str(s) => Ok(vec![PathElem::Name(s)]),
        Value::Array(items) if items.is_empty() => {
            bad('a', "a non-empty command path", &Value::Array(items))
        }
        Value::Array(items) => items
            .into_iter()
            .map(|item| match item {
                Value::Str(s) => Ok(PathElem::Name(s)),
                Value::Int(i) => i64::try_from(i)
                    .or_else(|_| bad('a', "path elements that are str or int", &Value::Int(i)))
                    .map(PathElem::Index),
                other => bad('a', "path elements that are str or int", &other),
            })
            .collect(),
        other => bad('a', "a str or an array of str/int", &other),
    }
}

fn parse_expect(v: Value) -> Result<Vec<String>, MessageError> {
    match v {
        Value::Array(items) => items
            .into_iter()
            .map(|item| match item {
                Value::Proxy(name) => Ok(name),
                other => bad('x', "an array of error proxies", &other),
            })
            .collect(),
        other => bad('x', "an array of error proxies", &other),
    }
}

fn need_seq(keys: &Keys, why: &'static str) -> Result<Seq, MessageError> {
    match &keys.i {
        Some(i) => parse_seq(i),
        None => Err(MessageError::Missing { key: 'i', why }),
    }
}

const ANSWER_NEEDS_I: &str =
    "replies, errors and stream messages carry the request's sequence number";

impl Message {
    /// Classifies and checks a decoded map (docs/protocol.md: Encoding). Unknown keys are
    /// ignored; keys that make no sense for the message's kind are too.
    pub fn from_value(v: Value) -> Result<Message, MessageError> {
        let pairs = match v {
            Value::Map(pairs) => pairs,
            other => {
                return Err(MessageError::NotAMap {
                    got: other.type_name(),
                })
            }
        };
        let mut k = Keys::collect(pairs)?;
        if let Some(a) = k.a.take() {
            let path = parse_path(a)?;
            let Some(i) = &k.i else {
                return Ok(Message::Unsolicited {
                    path,
                    data: k.d.unwrap_or(Value::Nil),
                });
            };
            let seq = parse_seq(i)?;
            let data = match k.d {
                // A peer passing None for "no kwargs" means the same as {}.
                None | Some(Value::Nil) => Value::Map(Vec::new()),
                Some(d @ Value::Map(_)) => d,
                Some(other) => return bad('d', "a map of keyword arguments", &other),
            };
            let stream =
                match k.r {
                    None => None,
                    Some(Value::Int(ms)) => Some(u32::try_from(ms).or_else(|_| {
                        bad('r', "a stream interval in ms (0..2^32)", &Value::Int(ms))
                    })?),
                    Some(other) => return bad('r', "a stream interval in ms (int)", &other),
                };
            let expect = k.x.map(parse_expect).transpose()?.unwrap_or_default();
            return Ok(Message::Request {
                path,
                data,
                seq,
                stream,
                expect,
            });
        }
        if let Some(e) = k.e.take() {
            let seq = need_seq(&k, ANSWER_NEEDS_I)?;
            let args = match k.d {
                None => Vec::new(),
                Some(Value::Array(args)) => args,
                Some(other) => return bad('d', "an array of the exception's args", &other),
            };
            let error = match e {
                Value::Proxy(name) => RemoteError::named(&name, args),
                Value::Str(text) => RemoteError::Generic(text),
                other => return bad('e', "an error proxy or str", &other),
            };
            return Ok(Message::Error { seq, error });
        }
        if let Some(r) = k.r.take() {
            let seq = need_seq(&k, ANSWER_NEEDS_I)?;
            return match r {
                Value::Bool(false) => Ok(Message::StreamEnd { seq }),
                other => bad(
                    'r',
                    "false (end of stream) in a message without `a`",
                    &other,
                ),
            };
        }
        if let Some(data) = k.d.take() {
            let seq = need_seq(&k, ANSWER_NEEDS_I)?;
            return match k.n {
                None => Ok(Message::Reply { seq, data }),
                Some(Value::Int(n)) if n >= 1 => Ok(Message::StreamItem {
                    seq,
                    n: u64::try_from(n).or_else(|_| {
                        bad('n', "a stream item counter (int from 1)", &Value::Int(n))
                    })?,
                    data,
                }),
                Some(other) => bad('n', "a stream item counter (int from 1)", &other),
            };
        }
        match &k.i {
            Some(i) => Ok(Message::Cancel { seq: parse_seq(i)? }),
            None => Err(MessageError::Empty),
        }
    }

    /// Decodes one message filling all of `bytes` (default [`Limits`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<Message, MessageError> {
        Message::from_value(msgpack::decode_exact(bytes, &Limits::default())?)
    }

    /// The message as a map with keys in the canonical order `a d i e r n x`.
    pub fn to_value(&self) -> Value {
        let mut m: Vec<(Value, Value)> = Vec::with_capacity(4);
        let mut put = |k: &str, v: Value| m.push((Value::Str(k.to_owned()), v));
        match self {
            Message::Request {
                path,
                data,
                seq,
                stream,
                expect,
            } => {
                put("a", path_value(path));
                put("d", data.clone());
                put("i", Value::from(*seq));
                if let Some(ms) = stream {
                    put("r", Value::from(*ms));
                }
                if !expect.is_empty() {
                    let names = expect.iter().map(|n| Value::Proxy(n.clone())).collect();
                    put("x", Value::Array(names));
                }
            }
            Message::Unsolicited { path, data } => {
                put("a", path_value(path));
                if !data.is_nil() {
                    put("d", data.clone());
                }
            }
            Message::Reply { seq, data } => {
                put("d", data.clone());
                put("i", Value::from(*seq));
            }
            Message::StreamItem { seq, n, data } => {
                put("d", data.clone());
                put("i", Value::from(*seq));
                put("n", Value::from(*n));
            }
            Message::StreamEnd { seq } => {
                put("i", Value::from(*seq));
                put("r", Value::Bool(false));
            }
            Message::Error { seq, error } => {
                // Proxied errors always carry their args; generic ones have none.
                if !matches!(error, RemoteError::Generic(_)) {
                    put("d", Value::Array(error.args().to_vec()));
                }
                put("i", Value::from(*seq));
                put("e", error.wire_value());
            }
            Message::Cancel { seq } => put("i", Value::from(*seq)),
        }
        Value::Map(m)
    }

    /// Appends the MsgPack encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        msgpack::encode(&self.to_value(), out);
    }

    /// The MsgPack encoding as a new vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        msgpack::to_vec(&self.to_value())
    }

    pub fn kind(&self) -> Kind {
        match self {
            Message::Request { .. } => Kind::Request,
            Message::Unsolicited { .. } => Kind::Unsolicited,
            Message::Reply { .. } => Kind::Reply,
            Message::StreamItem { .. } => Kind::StreamItem,
            Message::StreamEnd { .. } => Kind::StreamEnd,
            Message::Error { .. } => Kind::Error,
            Message::Cancel { .. } => Kind::Cancel,
        }
    }

    /// The sequence number, if the message has one.
    pub fn seq(&self) -> Option<Seq> {
        match self {
            Message::Unsolicited { .. } => None,
            Message::Request { seq, .. }
            | Message::Reply { seq, .. }
            | Message::StreamItem { seq, .. }
            | Message::StreamEnd { seq }
            | Message::Error { seq, .. }
            | Message::Cancel { seq } => Some(*seq),
        }
    }

    /// Flips bit 0 of `i` (done on receipt; docs/protocol.md: Encoding, sequence numbers); no-op without `i`.
    pub fn flip_seq(&mut self) {
        match self {
            Message::Unsolicited { .. } => {}
            Message::Request { seq, .. }
            | Message::Reply { seq, .. }
            | Message::StreamItem { seq, .. }
            | Message::StreamEnd { seq }
            | Message::Error { seq, .. }
            | Message::Cancel { seq } => *seq = seq::flip(*seq),
        }
    }

    /// The command path of a request or unsolicited message.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Message::Request { path, .. } | Message::Unsolicited { path, .. } => Some(path),
            _ => None,
        }
    }

    // Constructors, one per kind.

    /// `{a: path, d: kwargs, i: seq}`.
    pub fn request<E: Into<PathElem>>(
        path: impl IntoIterator<Item = E>,
        kwargs: Value,
        seq: Seq,
    ) -> Message {
        Message::Request {
            path: self::path(path),
            data: kwargs,
            seq,
            stream: None,
            expect: Vec::new(),
        }
    }

    /// Turns a request into a stream request (`r: ms`); other kinds unchanged.
    pub fn streaming(mut self, ms: u32) -> Message {
        if let Message::Request { stream, .. } = &mut self {
            *stream = Some(ms);
        }
        self
    }

    /// Adds expected error names (`x`) to a request; other kinds unchanged.
    pub fn expecting<S: Into<String>>(mut self, names: impl IntoIterator<Item = S>) -> Message {
        if let Message::Request { expect, .. } = &mut self {
            expect.extend(names.into_iter().map(Into::into));
        }
        self
    }

    /// `{a: path, d: data}`: unsolicited or fire-and-forget.
    pub fn unsolicited<E: Into<PathElem>>(
        path: impl IntoIterator<Item = E>,
        data: Value,
    ) -> Message {
        Message::Unsolicited {
            path: self::path(path),
            data,
        }
    }

    /// `{d: result, i: seq}`.
    pub fn reply(seq: Seq, result: Value) -> Message {
        Message::Reply { seq, data: result }
    }

    /// `{d: args, i: seq, e: error}`.
    pub fn error(seq: Seq, error: RemoteError) -> Message {
        Message::Error { seq, error }
    }

    /// `{d: value, i: seq, n: n}`.
    pub fn stream_item(seq: Seq, n: u64, value: Value) -> Message {
        Message::StreamItem {
            seq,
            n,
            data: value,
        }
    }

    /// `{i: seq, r: false}`.
    pub fn stream_end(seq: Seq) -> Message {
        Message::StreamEnd { seq }
    }

    /// `{i: seq}`.
    pub fn cancel(seq: Seq) -> Message {
        Message::Cancel { seq }
    }
}

fn path_value(path: &Path) -> Value {
    Value::Array(path.iter().map(Value::from).collect())
}

impl TryFrom<Value> for Message {
    type Error = MessageError;
    fn try_from(v: Value) -> Result<Message, MessageError> {
        Message::from_value(v)
    }
}

impl From<&Message> for Value {
    fn from(m: &Message) -> Value {
        m.to_value()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::WellKnown;

    fn parse(pairs: Vec<(&str, Value)>) -> Result<Message, MessageError> {
        Message::from_value(Value::map(pairs))
    }

    fn arr(items: &[&str]) -> Value {
        Value::Array(items.iter().map(|s| Value::from(*s)).collect())
    }

    #[test]
    fn keys_in_any_order_give_the_same_request() {
        let a = parse(vec![
            ("i", 2.into()),
            ("d", Value::map([("p", "".into())])),
            ("a", arr(&["fs", "ls"])),
        ])
        .unwrap();
        let b = Message::request(["fs", "ls"], Value::map([("p", "".into())]), 2);
        assert_eq!(a, b);
        // ... and it re-encodes in canonical order.
        let keys: Vec<_> = match a.to_value() {
            Value::Map(m) => m.into_iter().map(|(k, _)| k).collect(),
            _ => unreachable!(),
        };
        assert_eq!(keys, ["a", "d", "i"].map(Value::from));
    }

    #[test]
    fn plain_string_action_is_a_one_element_path_without_dot_splitting() {
        let m = parse(vec![("a", "sys.wdt".into())]).unwrap();
        assert_eq!(m, Message::unsolicited(["sys.wdt"], Value::Nil));
    }

    #[test]
    fn request_without_d_has_empty_kwargs() {
        let m = parse(vec![("a", arr(&["ping"])), ("i", 4.into())]).unwrap();
        assert_eq!(m, Message::request(["ping"], Value::Map(vec![]), 4));
        let m = parse(vec![
            ("a", arr(&["ping"])),
            ("d", Value::Nil),
            ("i", 4.into()),
        ])
        .unwrap();
        assert_eq!(m, Message::request(["ping"], Value::Map(vec![]), 4));
    }

    #[test]
    fn classification_follows_key_precedence() {
        let kind = |pairs| parse(pairs).unwrap().kind();
        // `a` wins over everything.
        assert_eq!(
            kind(vec![
                ("a", arr(&["x"])),
                ("e", "E:x".into()),
                ("i", 2.into())
            ]),
            Kind::Request
        );
        assert_eq!(
            kind(vec![("a", arr(&["x"])), ("d", 1.into())]),
            Kind::Unsolicited
        );
        // then `e`, then `r`, then `d`, then `i` alone.
        assert_eq!(
            kind(vec![
                ("e", "E:x".into()),
                ("r", false.into()),
                ("i", 3.into())
            ]),
            Kind::Error
        );
        assert_eq!(
            kind(vec![("r", false.into()), ("d", 1.into()), ("i", 3.into())]),
            Kind::StreamEnd
        );
        assert_eq!(kind(vec![("d", 1.into()), ("i", 3.into())]), Kind::Reply);
        assert_eq!(
            kind(vec![("d", 1.into()), ("n", 2.into()), ("i", 3.into())]),
            Kind::StreamItem
        );
        assert_eq!(kind(vec![("i", 2.into())]), Kind::Cancel);
    }

    #[test]
    fn unknown_keys_are_ignored() {
        let m = parse(vec![("i", 2.into()), ("zz", 1.into())]).unwrap();
        assert_eq!(m, Message::cancel(2));
        let m = Message::from_value(Value::Map(vec![
            (Value::Int(1), Value::Nil),
            ("i".into(), 2.into()),
        ]))
        .unwrap();
        assert_eq!(m, Message::cancel(2));
    }

    #[test]
    fn unknown_keys_are_logged_once_each() {
        assert!(first_sighting("test-key-q"));
        assert!(!first_sighting("test-key-q"));
        assert!(first_sighting("test-key-w"));
    }

    #[test]
    fn invalid_shapes_name_the_key_and_expectation() {
        let err = parse(vec![("i", "two".into())]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "message key `i`: expected an int sequence number, got str \"two\""
        );
        let err = parse(vec![("a", 5.into())]).unwrap_err();
        assert!(
            matches!(err, MessageError::BadKey { key: 'a', .. }),
            "{err}"
        );
        assert!(
            err.to_string().contains("a str or an array of str/int"),
            "{err}"
        );
        let err = parse(vec![("a", Value::Array(vec![Value::Nil]))]).unwrap_err();
        assert!(
            err.to_string()
                .contains("path elements that are str or int"),
            "{err}"
        );
        let err = parse(vec![("i", (-1).into())]).unwrap_err();
        assert!(
            matches!(err, MessageError::BadKey { key: 'i', .. }),
            "{err}"
        );
        let err = parse(vec![("d", 1.into())]).unwrap_err();
        assert!(
            matches!(err, MessageError::Missing { key: 'i', .. }),
            "{err}"
        );
        let err = parse(vec![("a", arr(&["x"])), ("i", 2.into()), ("d", 1.into())]).unwrap_err();
        assert!(err.to_string().contains("keyword arguments"), "{err}");
        let err = parse(vec![("r", 5.into()), ("i", 3.into())]).unwrap_err();
        assert!(
            matches!(err, MessageError::BadKey { key: 'r', .. }),
            "{err}"
        );
        let err = parse(vec![("d", 1.into()), ("n", 0.into()), ("i", 3.into())]).unwrap_err();
        assert!(
            matches!(err, MessageError::BadKey { key: 'n', .. }),
            "{err}"
        );
        let err = parse(vec![("e", 1.into()), ("i", 3.into())]).unwrap_err();
        assert!(
            matches!(err, MessageError::BadKey { key: 'e', .. }),
            "{err}"
        );
        assert_eq!(parse(vec![]).unwrap_err(), MessageError::Empty);
        assert_eq!(
            Message::from_value(Value::Int(1)).unwrap_err(),
            MessageError::NotAMap { got: "int" }
        );
        let err = parse(vec![("i", 2.into()), ("i", 4.into())]).unwrap_err();
        assert_eq!(err, MessageError::Duplicate { key: 'i' });
    }

    #[test]
    fn errors_round_trip_well_known_named_and_generic() {
        for error in [
            RemoteError::no_path(vec!["nope".into()], "no such app"),
            RemoteError::well_known(WellKnown::Stopped, vec![]),
            RemoteError::named("_Custom", vec![1.into()]),
            RemoteError::generic("ValueError('bad')"),
        ] {
            let m = Message::error(9, error);
            assert_eq!(Message::from_bytes(&m.to_bytes()).unwrap(), m);
        }
    }

    #[test]
    fn stream_request_and_expectations_round_trip() {
        let m = Message::request(["t", "temp"], Value::Map(vec![]), 6)
            .streaming(10_000)
            .expecting(["_KyErr"]);
        let back = Message::from_bytes(&m.to_bytes()).unwrap();
        assert_eq!(back, m);
        assert!(
            matches!(back, Message::Request { stream: Some(10_000), ref expect, .. } if expect == &["_KyErr"])
        );
    }

    #[test]
    fn reply_with_none_keeps_its_d() {
        let m = Message::reply(3, Value::Nil);
        assert_eq!(Message::from_bytes(&m.to_bytes()).unwrap(), m);
    }

    #[test]
    fn flip_seq_turns_requests_into_answer_numbers() {
        let mut m = Message::request(["ping"], Value::Map(vec![]), 4);
        m.flip_seq();
        assert_eq!(m.seq(), Some(5));
        let mut u = Message::unsolicited(["link"], true.into());
        u.flip_seq();
        assert_eq!(u.seq(), None);
    }

    #[test]
    fn int_path_elements_survive() {
        let m = Message::request(
            vec![
                PathElem::from("sensors"),
                PathElem::from(3i64),
                PathElem::from("r"),
            ],
            Value::Map(vec![]),
            14,
        );
        assert_eq!(Message::from_bytes(&m.to_bytes()).unwrap(), m);
    }
}
