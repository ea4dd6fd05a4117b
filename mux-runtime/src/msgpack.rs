//! MsgPack encoding and decoding of [`Value`]s.
//!
//! Why `rmp` and not `rmpv`/`rmp-serde`: we need three things those layers
//! hide — telling "incomplete, feed me more bytes" apart from "malformed"
//! (for streaming framings), errors carrying the byte offset, and caps on
//! every length field before anything is allocated. `rmp` gives the marker
//! table and the primitive writers; the walk over the bytes is ours.

use rmp::Marker;
use std::fmt;

use crate::value::{Value, PROXY_EXT};

/// Caps applied while decoding, so a hostile length field cannot make us
/// allocate or recurse without bound.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest str/bin/ext payload, in bytes.
    pub max_bytes: usize,
    /// Most elements in one array or map.
    pub max_items: usize,
    /// Deepest nesting of arrays/maps.
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 1 << 20,
            max_items: 1 << 16,
            max_depth: 32,
        }
    }
}

/// Why bytes could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError {
    /// Offset of the offending byte from the start of the input.
    pub offset: usize,
    pub kind: DecodeErrorKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeErrorKind {
    /// 0xc1 is never used by MsgPack.
    ReservedMarker,
    /// A str whose bytes are not UTF-8.
    InvalidUtf8,
    /// A length field larger than the configured limit.
    TooLong { len: usize, max: usize },
    /// Nesting deeper than the configured limit.
    TooDeep { max: usize },
    /// The value decoded, but was not of the type the caller expected.
    UnexpectedType {
        expected: &'static str,
        got: &'static str,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = self.offset;
        match &self.kind {
            DecodeErrorKind::ReservedMarker => {
                write!(f, "byte {at}: 0xc1 is not a MsgPack marker")
            }
            DecodeErrorKind::InvalidUtf8 => write!(f, "byte {at}: str is not valid UTF-8"),
            DecodeErrorKind::TooLong { len, max } => write!(
                f,
                "byte {at}: length {len} exceeds the limit of {max} (raise the link's size limit if this is legitimate)"
            ),
            DecodeErrorKind::TooDeep { max } => {
                write!(f, "byte {at}: nesting deeper than {max} levels")
            }
            DecodeErrorKind::UnexpectedType { expected, got } => {
                write!(f, "byte {at}: expected {expected}, got {got}")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// Decodes one value from the start of `buf`.
///
/// `Ok(None)`: `buf` holds only a prefix of a valid value; call again with
/// more bytes. `Ok(Some((value, used)))`: a value and how many bytes it took.
pub fn decode(buf: &[u8], limits: &Limits) -> Result<Option<(Value, usize)>, DecodeError> {
    let mut r = Reader {
        buf,
        pos: 0,
        limits,
    };
    match r.value(0) {
        Ok(v) => Ok(Some((v, r.pos))),
        Err(Stop::Incomplete) => Ok(None),
        Err(Stop::Bad(e)) => Err(e),
    }
}

/// Decodes exactly one value filling all of `buf` (e.g. a frame's payload).
pub fn decode_exact(buf: &[u8], limits: &Limits) -> Result<Value, DecodeError> {
    match decode(buf, limits)? {
        Some((v, used)) if used == buf.len() => Ok(v),
        Some((_, used)) => Err(DecodeError {
            offset: used,
            kind: DecodeErrorKind::UnexpectedType {
                expected: "end of data",
                got: "trailing bytes",
            },
        }),
        None => Err(DecodeError {
            offset: buf.len(),
            kind: DecodeErrorKind::UnexpectedType {
                expected: "more bytes",
                got: "end of data",
            },
        }),
    }
}

enum Stop {
    Incomplete,
    Bad(DecodeError),
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    limits: &'a Limits,
}

impl<'a> Reader<'a> {
    fn bad(&self, offset: usize, kind: DecodeErrorKind) -> Stop {
        Stop::Bad(DecodeError { offset, kind })
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Stop> {
        if self.buf.len() - self.pos < n {
            return Err(Stop::Incomplete);
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn uint(&mut self, n: usize) -> Result<u64, Stop> {
        Ok(self
            .take(n)?
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }

    fn len(&mut self, n: usize, max: usize, at: usize) -> Result<usize, Stop> {
        let len = self.uint(n)? as usize;
        if len > max {
            return Err(self.bad(at, DecodeErrorKind::TooLong { len, max }));
        }
        Ok(len)
    }

    fn value(&mut self, depth: usize) -> Result<Value, Stop> {
        let at = self.pos;
        let byte = self.take(1)?[0];
        let lim = *self.limits;
        Ok(match Marker::from_u8(byte) {
            Marker::FixPos(v) => Value::Int(v.into()),
            Marker::FixNeg(v) => Value::Int(v.into()),
            Marker::Null => Value::Nil,
            Marker::True => Value::Bool(true),
            Marker::False => Value::Bool(false),
            Marker::U8 => Value::Int(self.uint(1)?.into()),
            Marker::U16 => Value::Int(self.uint(2)?.into()),
            Marker::U32 => Value::Int(self.uint(4)?.into()),
            Marker::U64 => Value::Int(self.uint(8)?.into()),
            Marker::I8 => Value::Int((self.uint(1)? as u8 as i8).into()),
            Marker::I16 => Value::Int((self.uint(2)? as u16 as i16).into()),
            Marker::I32 => Value::Int((self.uint(4)? as u32 as i32).into()),
            Marker::I64 => Value::Int((self.uint(8)? as i64).into()),
            Marker::F32 => Value::Float(f32::from_bits(self.uint(4)? as u32).into()),
            Marker::F64 => Value::Float(f64::from_bits(self.uint(8)?)),
            Marker::FixStr(n) => self.str(n.into(), at)?,
            Marker::Str8 => {
                let n = self.len(1, lim.max_bytes, at)?;
                self.str(n, at)?
            }
            Marker::Str16 => {
                let n = self.len(2, lim.max_bytes, at)?;
                self.str(n, at)?
            }
            Marker::Str32 => {
                let n = self.len(4, lim.max_bytes, at)?;
                self.str(n, at)?
            }
            Marker::Bin8 => {
                let n = self.len(1, lim.max_bytes, at)?;
                Value::Bin(self.take(n)?.to_vec())
            }
            Marker::Bin16 => {
                let n = self.len(2, lim.max_bytes, at)?;
                Value::Bin(self.take(n)?.to_vec())
            }
            Marker::Bin32 => {
                let n = self.len(4, lim.max_bytes, at)?;
                Value::Bin(self.take(n)?.to_vec())
            }
            Marker::FixArray(n) => self.array(n.into(), depth, at)?,
            Marker::Array16 => {
                let n = self.len(2, lim.max_items, at)?;
                self.array(n, depth, at)?
            }
            Marker::Array32 => {
                let n = self.len(4, lim.max_items, at)?;
                self.array(n, depth, at)?
            }
            Marker::FixMap(n) => self.map(n.into(), depth, at)?,
            Marker::Map16 => {
                let n = self.len(2, lim.max_items, at)?;
                self.map(n, depth, at)?
            }
            Marker::Map32 => {
                let n = self.len(4, lim.max_items, at)?;
                self.map(n, depth, at)?
            }
            Marker::FixExt1 => self.ext(1)?,
            Marker::FixExt2 => self.ext(2)?,
            Marker::FixExt4 => self.ext(4)?,
            Marker::FixExt8 => self.ext(8)?,
            Marker::FixExt16 => self.ext(16)?,
            Marker::Ext8 => {
                let n = self.len(1, lim.max_bytes, at)?;
                self.ext(n)?
            }
            Marker::Ext16 => {
                let n = self.len(2, lim.max_bytes, at)?;
                self.ext(n)?
            }
            Marker::Ext32 => {
                let n = self.len(4, lim.max_bytes, at)?;
                self.ext(n)?
            }
            Marker::Reserved => return Err(self.bad(at, DecodeErrorKind::ReservedMarker)),
        })
    }

    fn str(&mut self, n: usize, at: usize) -> Result<Value, Stop> {
        let bytes = self.take(n)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(Value::Str(s.to_owned())),
            Err(_) => Err(self.bad(at, DecodeErrorKind::InvalidUtf8)),
        }
    }

    fn nest(&self, depth: usize, at: usize) -> Result<usize, Stop> {
        if depth >= self.limits.max_depth {
            return Err(self.bad(
                at,
                DecodeErrorKind::TooDeep {
                    max: self.limits.max_depth,
                },
            ));
        }
        Ok(depth + 1)
    }

    fn array(&mut self, n: usize, depth: usize, at: usize) -> Result<Value, Stop> {
        let depth = self.nest(depth, at)?;
        // Each element takes at least one byte: never reserve more than is there.
        let mut items = Vec::with_capacity(n.min(self.buf.len() - self.pos));
        for _ in 0..n {
            items.push(self.value(depth)?);
        }
        Ok(Value::Array(items))
    }

    fn map(&mut self, n: usize, depth: usize, at: usize) -> Result<Value, Stop> {
        let depth = self.nest(depth, at)?;
        let mut pairs = Vec::with_capacity(n.min((self.buf.len() - self.pos) / 2));
        for _ in 0..n {
            let k = self.value(depth)?;
            let v = self.value(depth)?;
            pairs.push((k, v));
        }
        Ok(Value::Map(pairs))
    }

    fn ext(&mut self, n: usize) -> Result<Value, Stop> {
        let ty = self.take(1)?[0] as i8;
        let data = self.take(n)?;
        if ty == PROXY_EXT {
            if let Ok(name) = std::str::from_utf8(data) {
                return Ok(Value::Proxy(name.to_owned()));
            }
        }
        Ok(Value::Ext(ty, data.to_vec()))
    }
}

/// Appends the MsgPack encoding of `v` to `out`.
///
/// Integers use the smallest representation, floats are float32 when that
/// is exact, maps keep their order. An integer outside MsgPack's range
/// (only possible for a hand-built `Value::Int`, never a decoded one) is
/// written as float64 rather than failing.
pub fn encode(v: &Value, out: &mut Vec<u8>) {
    // Writing into a Vec cannot fail: unwraps below are infallible.
    match v {
        Value::Nil => rmp::encode::write_nil(out).unwrap(),
        Value::Bool(b) => rmp::encode::write_bool(out, *b).unwrap(),
        Value::Int(i) => {
            if let Ok(u) = u64::try_from(*i) {
                rmp::encode::write_uint(out, u).unwrap();
            } else if let Ok(s) = i64::try_from(*i) {
                rmp::encode::write_sint(out, s).unwrap();
            } else {
                rmp::encode::write_f64(out, *i as f64).unwrap();
            }
        }
        Value::Float(x) => {
            let narrow = *x as f32;
            if f64::from(narrow) == *x || x.is_nan() {
                rmp::encode::write_f32(out, narrow).unwrap();
            } else {
                rmp::encode::write_f64(out, *x).unwrap();
            }
        }
        Value::Str(s) => rmp::encode::write_str(out, s).unwrap(),
        Value::Bin(b) => rmp::encode::write_bin(out, b).unwrap(),
        Value::Array(items) => {
            rmp::encode::write_array_len(out, items.len() as u32).unwrap();
            for item in items {
                encode(item, out);
            }
        }
        Value::Map(pairs) => {
            rmp::encode::write_map_len(out, pairs.len() as u32).unwrap();
            for (k, v) in pairs {
                encode(k, out);
                encode(v, out);
            }
        }
        Value::Proxy(name) => {
            rmp::encode::write_ext_meta(out, name.len() as u32, PROXY_EXT).unwrap();
            out.extend_from_slice(name.as_bytes());
        }
        Value::Ext(ty, data) => {
            rmp::encode::write_ext_meta(out, data.len() as u32, *ty).unwrap();
            out.extend_from_slice(data);
        }
    }
}

/// Convenience: the encoding of `v` as a new vector.
pub fn to_vec(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    encode(v, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(v: Value) -> Vec<u8> {
        let bytes = to_vec(&v);
        assert_eq!(decode_exact(&bytes, &Limits::default()).unwrap(), v);
        bytes
    }

    #[test]
    fn float_is_f32_only_when_exact() {
        assert_eq!(roundtrip(Value::Float(21.5))[0], 0xca);
        assert_eq!(roundtrip(Value::Float(0.1))[0], 0xcb);
    }

    #[test]
    fn ints_use_smallest_form_across_full_range() {
        assert_eq!(roundtrip(Value::Int(5)), [5]);
        assert_eq!(roundtrip(Value::Int(-1)), [0xff]);
        assert_eq!(roundtrip(Value::Int(200))[0], 0xcc);
        assert_eq!(roundtrip(Value::Int(u64::MAX.into()))[0], 0xcf);
        assert_eq!(roundtrip(Value::Int(i64::MIN.into()))[0], 0xd3);
    }

    #[test]
    fn proxy_is_ext4_and_other_ext_passes_through() {
        assert_eq!(roundtrip(Value::Proxy("-".into())), [0xd4, 4, b'-']);
        roundtrip(Value::Ext(9, vec![1, 2, 3]));
    }

    #[test]
    fn every_prefix_is_incomplete_not_an_error() {
        let bytes = to_vec(&Value::map([
            ("a", Value::Array(vec!["fs".into(), "ls".into()])),
            ("d", Value::Bin(vec![7; 300])),
        ]));
        for cut in 0..bytes.len() {
            assert_eq!(
                decode(&bytes[..cut], &Limits::default()),
                Ok(None),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn huge_length_field_is_refused_before_allocating() {
        let bytes = [0xc6, 0xff, 0xff, 0xff, 0xff];
        let err = decode(&bytes, &Limits::default()).unwrap_err();
        assert_eq!(err.offset, 0);
        assert!(matches!(err.kind, DecodeErrorKind::TooLong { .. }), "{err}");
    }

    #[test]
    fn deep_nesting_is_refused() {
        let bytes = vec![0x91; 100];
        let err = decode(&bytes, &Limits::default()).unwrap_err();
        assert!(
            matches!(err.kind, DecodeErrorKind::TooDeep { max: 32 }),
            "{err}"
        );
    }

    #[test]
    fn reserved_marker_and_bad_utf8_name_their_offset() {
        let err = decode(&[0x92, 0x01, 0xc1], &Limits::default()).unwrap_err();
        assert_eq!(err.offset, 2);
        assert_eq!(err.kind, DecodeErrorKind::ReservedMarker);
        let err = decode(&[0x91, 0xa1, 0xff], &Limits::default()).unwrap_err();
        assert_eq!((err.offset, err.kind), (1, DecodeErrorKind::InvalidUtf8));
    }
}
