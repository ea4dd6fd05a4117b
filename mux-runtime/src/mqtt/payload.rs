//! What the bridge's messages carry (sans-I/O): every payload is MsgPack
//! (docs/mqtt.md §Payloads).
//!
//! - Node state (retained): `{s: "up"|"down", mux, board?, fw?, v?, why?}`.
//! - Session presence: `{s: "up"|"down", kind: "mux"|"client", nodes?}`;
//!   a session's last will is its `down`.
//! - Requests: one protocol message (docs/protocol.md: Encoding). Over MQTT 5 the
//!   reply topic travels as the publish's response topic (and correlation
//!   data, copied onto every answer); over MQTT 3.1.1, which has neither,
//!   the request is wrapped as `[reply_topic, message]`.
//! - Answers and unsolicited messages: one protocol message each.

use crate::msgpack::{self, DecodeError, Limits};
use crate::value::Value;

/// Why a payload was not understood.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum PayloadError {
    #[error("not a MsgPack value: {0}")]
    Decode(#[from] DecodeError),
    #[error("a protocol message must be a map, got {0}")]
    NotAMessage(&'static str),
    #[error(
        "a request needs a reply topic: an MQTT 5 response topic, or (MQTT 3.1.1) \
         the payload [reply_topic, message]"
    )]
    NoReplyTopic,
    #[error("a state must be a map with s = \"up\" or \"down\" and mux = its mux's name")]
    BadState,
}

/// One node's state as published (retained) by the mux holding it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct NodeState {
    pub up: bool,
    /// The session name of the mux holding the node.
    pub mux: String,
    pub board: Option<String>,
    /// Digest of the node's frozen modules (`sys.hash`), 16 hex digits.
    pub fw: Option<String>,
    /// The node runtime's version (`sys.info` `v`).
    pub version: Option<String>,
    /// Why the node is down.
    pub why: Option<String>,
}

fn up_down(up: bool) -> Value {
    Value::from(if up { "up" } else { "down" })
}

fn opt_str(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_owned)
}

impl NodeState {
    pub fn to_value(&self) -> Value {
        let mut m = vec![
            ("s", up_down(self.up)),
            ("mux", Value::from(self.mux.as_str())),
        ];
        let extra = [
            ("board", &self.board),
            ("fw", &self.fw),
            ("v", &self.version),
            ("why", &self.why),
        ];
        for (k, v) in extra {
            if let Some(v) = v {
                m.push((k, Value::from(v.as_str())));
            }
        }
        Value::map(m)
    }

    pub fn encode(&self) -> Vec<u8> {
        msgpack::to_vec(&self.to_value())
    }

    pub fn decode(payload: &[u8]) -> Result<NodeState, PayloadError> {
        let v = msgpack::decode_exact(payload, &Limits::default())?;
        let up = match v.get("s").and_then(Value::as_str) {
            Some("up") => true,
            Some("down") => false,
            _ => return Err(PayloadError::BadState),
        };
        Ok(NodeState {
            up,
            mux: opt_str(&v, "mux").ok_or(PayloadError::BadState)?,
            board: opt_str(&v, "board"),
            fw: opt_str(&v, "fw"),
            version: opt_str(&v, "v"),
            why: opt_str(&v, "why"),
        })
    }
}

/// A session's presence: a mux (with the nodes it holds) or a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Presence {
    pub up: bool,
    pub mux: bool,
    pub nodes: Vec<String>,
}

impl Presence {
    pub fn encode(&self) -> Vec<u8> {
        let mut m = vec![
            ("s", up_down(self.up)),
            ("kind", Value::from(if self.mux { "mux" } else { "client" })),
        ];
        if self.mux {
            let nodes = self.nodes.iter().map(|n| Value::from(n.as_str())).collect();
            m.push(("nodes", Value::Array(nodes)));
        }
        msgpack::to_vec(&Value::map(m))
    }

    /// Only `up` matters to a reader; an unreadable presence counts as
    /// down (the session is not one to serve).
    pub fn is_up(payload: &[u8]) -> bool {
        msgpack::decode_exact(payload, &Limits::default())
            .ok()
            .and_then(|v| v.get("s").and_then(Value::as_str).map(|s| s == "up"))
            .unwrap_or(false)
    }
}

/// One protocol message from a payload (answers, notices, MQTT 5
/// requests).
pub fn decode_message(payload: &[u8]) -> Result<Value, PayloadError> {
    match msgpack::decode_exact(payload, &Limits::default())? {
        m @ Value::Map(_) => Ok(m),
        other => Err(PayloadError::NotAMessage(other.type_name())),
    }
}

/// A request over MQTT 3.1.1: `[reply_topic, message]`.
pub fn encode_wrapped_request(reply_topic: &str, message: &Value) -> Vec<u8> {
    msgpack::to_vec(&Value::Array(vec![
        Value::from(reply_topic),
        message.clone(),
    ]))
}

/// A request and where to answer it: the MQTT 5 `response_topic` when the
/// publish had one, else the 3.1.1 wrapping.
pub fn decode_request(
    payload: &[u8],
    response_topic: Option<&str>,
) -> Result<(String, Value), PayloadError> {
    let v = msgpack::decode_exact(payload, &Limits::default())?;
    match (v, response_topic) {
        (m @ Value::Map(_), Some(topic)) => Ok((topic.to_owned(), m)),
        (Value::Map(_), None) => Err(PayloadError::NoReplyTopic),
        (Value::Array(items), _) => match <[Value; 2]>::try_from(items) {
            Ok([Value::Str(topic), m @ Value::Map(_)]) => Ok((topic, m)),
            _ => Err(PayloadError::NoReplyTopic),
        },
        (other, _) => Err(PayloadError::NotAMessage(other.type_name())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;

    #[test]
    fn node_states_round_trip_and_need_s_and_mux() {
        let s = NodeState {
            up: true,
            mux: "hall".into(),
            board: Some("esp32".into()),
            fw: Some("0123456789abcdef".into()),
            version: None,
            why: None,
        };
        assert_eq!(NodeState::decode(&s.encode()), Ok(s));
        let down = NodeState {
            mux: "hall".into(),
            why: Some("process exited".into()),
            ..NodeState::default()
        };
        assert_eq!(NodeState::decode(&down.encode()), Ok(down));
        let no_mux = msgpack::to_vec(&Value::map([("s", Value::from("up"))]));
        assert_eq!(NodeState::decode(&no_mux), Err(PayloadError::BadState));
        let odd = msgpack::to_vec(&Value::map([("s", Value::from("maybe"))]));
        assert_eq!(NodeState::decode(&odd), Err(PayloadError::BadState));
    }

    #[test]
    fn presence_says_up_only_when_it_says_so() {
        let p = Presence {
            up: true,
            mux: true,
            nodes: vec!["a".into()],
        };
        assert!(Presence::is_up(&p.encode()));
        assert!(!Presence::is_up(&Presence { up: false, ..p }.encode()));
        assert!(!Presence::is_up(b"\xc1junk"));
    }

    #[test]
    fn requests_take_their_reply_topic_from_mqtt5_or_the_wrapping() {
        let req = Message::request(["ping"], Value::map([("m", "hi".into())]), 2).to_value();
        let plain = msgpack::to_vec(&req);
        assert_eq!(
            decode_request(&plain, Some("r/1")),
            Ok(("r/1".to_owned(), req.clone()))
        );
        assert_eq!(
            decode_request(&plain, None),
            Err(PayloadError::NoReplyTopic)
        );
        let wrapped = encode_wrapped_request("r/2", &req);
        assert_eq!(decode_request(&wrapped, None), Ok(("r/2".to_owned(), req)));
        assert_eq!(
            decode_request(&msgpack::to_vec(&Value::from(3)), None),
            Err(PayloadError::NotAMessage("int"))
        );
        assert!(matches!(
            decode_request(b"\xc1", None),
            Err(PayloadError::Decode(_))
        ));
    }
}
