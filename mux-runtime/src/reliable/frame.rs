//! The reliable layer's frames and their map encoding (docs/protocol.md: Framing).
//!
//! Every SerialPacker frame on a lossy link carries one of these maps:
//!
//! | frame | map (keys in this order) |
//! |---|---|
//! | data / ack | `{s, r, x?, d?}` |
//! | reset request | `{a: "r", n: 1, c: {t, m}, i}` |
//! | reset ack, ack2 | `{a: "r", n: 2 \| 3, c: {t, m}, i, p}` |
//! | closing | `{a: "r", n: 0, e: reason, p?}` |
//!
//! `i` is the sender's connection id, `p` the id of the peer it answers or
//! closes (docs/reliable.md). A peer with the handshake from before
//! connection ids sends neither; both are optional here and the machine
//! treats their absence as "cannot tell".
//!
//! Encoding writes exactly these keys in this order (the vectors pin the
//! bytes); decoding accepts any key order and ignores unknown keys. Sequence
//! numbers are checked against the window by the state machine, not here,
//! because only it knows the agreed window.

use std::fmt;

use crate::value::Value;

/// A sequence number as it travels: already reduced modulo the window.
pub type WireSeq = u16;

/// A connection id: a random number a side picks for each handshake it
/// starts or answers. Ours stay below 2^30 (a MicroPython small int); any
/// `u32` is accepted.
pub type ConnId = u32;

/// The three steps of the reset handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetStep {
    /// `n: 1`: "let us (re)start the link with these parameters".
    Request,
    /// `n: 2`: the answer to a request, with the answerer's parameters.
    Ack,
    /// `n: 3`: confirms an ack; the requester is up.
    Ack2,
}

impl ResetStep {
    fn number(self) -> u8 {
        match self {
            ResetStep::Request => 1,
            ResetStep::Ack => 2,
            ResetStep::Ack2 => 3,
        }
    }
}

/// Link parameters a peer offers in the reset handshake (`c: {t, m}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    /// `t`: retransmit timeout in milliseconds.
    pub timeout_ms: u64,
    /// `m`: sequence number modulus ("window").
    pub window: u64,
}

/// One reliable-layer frame.
#[derive(Clone, Debug, PartialEq)]
pub enum Frame {
    /// Data with piggybacked acknowledgement, or a pure ack when `d` is `None`.
    Data {
        /// Data: this message's sequence number. Pure ack: the sequence
        /// number the sender's next new message will carry.
        s: WireSeq,
        /// Next sequence number the sender expects to receive: everything
        /// before it arrived.
        r: WireSeq,
        /// Sequence numbers after `r` already received (out of order).
        x: Vec<WireSeq>,
        /// The message, absent in a pure ack.
        d: Option<Value>,
    },
    /// One step of the reset handshake.
    Reset {
        step: ResetStep,
        params: Params,
        /// `i`: the sender's connection id (absent from a peer that
        /// predates connection ids).
        id: Option<ConnId>,
        /// `p`: the connection id of the request this ack (ack2) answers;
        /// absent in a request.
        peer: Option<ConnId>,
    },
    /// `n: 0`: the sender closes the link and says why.
    Close {
        reason: String,
        /// `p`: the connection id of the side being closed, when the sender
        /// knows it; a closing frame for another id is stale.
        peer: Option<ConnId>,
    },
}

/// Why a map is not a reliable-layer frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameError {
    NotAMap {
        got: &'static str,
    },
    MissingKey {
        key: &'static str,
    },
    WrongType {
        key: &'static str,
        expected: &'static str,
        got: &'static str,
    },
    OutOfRange {
        key: &'static str,
        value: i128,
    },
    UnknownControl {
        a: String,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::NotAMap { got } => write!(
                f,
                "reliable frame is a {got}, expected a map (is the peer speaking the reliable layer?)"
            ),
            FrameError::MissingKey { key } => {
                write!(f, "reliable frame lacks key `{key}` (see docs/protocol.md: Framing)")
            }
            FrameError::WrongType { key, expected, got } => write!(
                f,
                "reliable frame key `{key}` is a {got}, expected {expected}"
            ),
            FrameError::OutOfRange { key, value } => {
                write!(f, "reliable frame key `{key}` = {value} is out of range")
            }
            FrameError::UnknownControl { a } => write!(
                f,
                "reliable control frame `a: {a:?}` is unknown; only `a: \"r\"` (reset) exists"
            ),
        }
    }
}

impl std::error::Error for FrameError {}

fn key(k: &str) -> Value {
    Value::Str(k.to_owned())
}

impl Frame {
    /// A pure acknowledgement.
    pub fn ack(s: WireSeq, r: WireSeq, x: Vec<WireSeq>) -> Frame {
        Frame::Data { s, r, x, d: None }
    }

    /// True for data frames that carry a message.
    pub fn has_message(&self) -> bool {
        matches!(self, Frame::Data { d: Some(_), .. })
    }

    /// The map as it goes on the wire, keys in canonical order.
    pub fn to_value(&self) -> Value {
        match self {
            Frame::Data { s, r, x, d } => {
                let mut m = vec![(key("s"), Value::from(*s)), (key("r"), Value::from(*r))];
                if !x.is_empty() {
                    m.push((
                        key("x"),
                        Value::Array(x.iter().map(|&q| Value::from(q)).collect()),
                    ));
                }
                if let Some(d) = d {
                    m.push((key("d"), d.clone()));
                }
                Value::Map(m)
            }
            Frame::Reset {
                step,
                params,
                id,
                peer,
            } => {
                let mut m = vec![
                    (key("a"), key("r")),
                    (key("n"), Value::from(step.number())),
                    (
                        key("c"),
                        Value::Map(vec![
                            (key("t"), Value::from(params.timeout_ms)),
                            (key("m"), Value::from(params.window)),
                        ]),
                    ),
                ];
                if let Some(id) = id {
                    m.push((key("i"), Value::from(*id)));
                }
                if let Some(peer) = peer {
                    m.push((key("p"), Value::from(*peer)));
                }
                Value::Map(m)
            }
            Frame::Close { reason, peer } => {
                let mut m = vec![
                    (key("a"), key("r")),
                    (key("n"), Value::from(0u8)),
                    (key("e"), Value::Str(reason.clone())),
                ];
                if let Some(peer) = peer {
                    m.push((key("p"), Value::from(*peer)));
                }
                Value::Map(m)
            }
        }
    }

    /// Reads a frame from a decoded map.
    pub fn from_value(v: &Value) -> Result<Frame, FrameError> {
        if !matches!(v, Value::Map(_)) {
            return Err(FrameError::NotAMap { got: v.type_name() });
        }
        match v.get("a") {
            None => Self::data_from(v),
            Some(Value::Str(a)) if a == "r" => Self::control_from(v),
            Some(Value::Str(a)) => Err(FrameError::UnknownControl { a: a.clone() }),
            Some(other) => Err(FrameError::WrongType {
                key: "a",
                expected: "str",
                got: other.type_name(),
            }),
        }
    }

    fn data_from(v: &Value) -> Result<Frame, FrameError> {
        let s = seq(v, "s")?;
        let r = seq(v, "r")?;
        let x = match v.get("x") {
            None | Some(Value::Nil) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|q| seq_value("x", q))
                .collect::<Result<_, _>>()?,
            Some(other) => {
                return Err(FrameError::WrongType {
                    key: "x",
                    expected: "array of int",
                    got: other.type_name(),
                })
            }
        };
        let d = v.get("d").cloned();
        Ok(Frame::Data { s, r, x, d })
    }

    fn control_from(v: &Value) -> Result<Frame, FrameError> {
        let n = int(v, "n")?;
        let step = match n {
            0 => {
                // The reason is for humans; tolerate its absence or odd types.
                let reason = match v.get("e") {
                    None | Some(Value::Nil) => String::new(),
                    Some(Value::Str(s)) => s.clone(),
                    Some(other) => other.to_string(),
                };
                return Ok(Frame::Close {
                    reason,
                    peer: conn_id(v, "p")?,
                });
            }
            1 => ResetStep::Request,
            2 => ResetStep::Ack,
            3 => ResetStep::Ack2,
            _ => return Err(FrameError::OutOfRange { key: "n", value: n }),
        };
        let c = v.get("c").ok_or(FrameError::MissingKey { key: "c" })?;
        if !matches!(c, Value::Map(_)) {
            return Err(FrameError::WrongType {
                key: "c",
                expected: "map",
                got: c.type_name(),
            });
        }
        let params = Params {
            timeout_ms: non_negative(c, "t")?,
            window: non_negative(c, "m")?,
        };
        Ok(Frame::Reset {
            step,
            params,
            id: conn_id(v, "i")?,
            peer: conn_id(v, "p")?,
        })
    }
}

fn int(v: &Value, k: &'static str) -> Result<i128, FrameError> {
    match v.get(k) {
        None => Err(FrameError::MissingKey { key: k }),
        Some(Value::Int(i)) => Ok(*i),
        Some(other) => Err(FrameError::WrongType {
            key: k,
            expected: "int",
            got: other.type_name(),
        }),
    }
}

fn non_negative(v: &Value, k: &'static str) -> Result<u64, FrameError> {
    let i = int(v, k)?;
    u64::try_from(i).map_err(|_| FrameError::OutOfRange { key: k, value: i })
}

/// An optional connection id (`nil` counts as absent).
fn conn_id(v: &Value, k: &'static str) -> Result<Option<ConnId>, FrameError> {
    match v.get(k) {
        None | Some(Value::Nil) => Ok(None),
        Some(Value::Int(i)) => ConnId::try_from(*i)
            .map(Some)
            .map_err(|_| FrameError::OutOfRange { key: k, value: *i }),
        Some(other) => Err(FrameError::WrongType {
            key: k,
            expected: "int",
            got: other.type_name(),
        }),
    }
}

fn seq(v: &Value, k: &'static str) -> Result<WireSeq, FrameError> {
    match v.get(k) {
        None => Err(FrameError::MissingKey { key: k }),
        Some(q) => seq_value(k, q),
    }
}

fn seq_value(k: &'static str, q: &Value) -> Result<WireSeq, FrameError> {
    match q {
        Value::Int(i) => {
            WireSeq::try_from(*i).map_err(|_| FrameError::OutOfRange { key: k, value: *i })
        }
        other => Err(FrameError::WrongType {
            key: k,
            expected: "int",
            got: other.type_name(),
        }),
    }
}
