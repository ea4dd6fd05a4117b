//! moat's wire protocol, links and multiplexer.
//!
//! The protocol half is sans-I/O: values and their MsgPack encoding
//! ([`value`], [`msgpack`]), the message model ([`message`], [`seq`]) and the
//! framings ([`framing`]) are pure functions and state machines fed with bytes.
//! The reliable layer ([`reliable`]) is a state machine plus a tokio task.

pub mod auth;
pub mod endpoint;
pub mod error;
pub mod framing;
pub mod link;
pub mod message;
pub mod mqtt;
pub mod msgpack;
pub mod mux;
pub mod notation;
pub mod reliable;
pub mod seq;
pub mod value;

pub use value::Value;
