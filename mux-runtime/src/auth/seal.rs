//! Sealed messages (docs/auth.md §Sealed messages): after the handshake
//! every message travels with a one-byte counter `c` and a tag `T` in
//! front of its MsgPack bytes `B`:
//!
//! - stream links (tcp, process, usb): `{s: bin(c | T | B)}`, `T` 16
//!   bytes; a map because their framing tells messages from console bytes
//!   by a map's first byte;
//! - serial links (SerialPacker frames under the reliable layer):
//!   `bin(c | T | B)`, `T` 8 bytes; every byte there costs a UART's time
//!   (87 µs at 115 200 baud), and a frame already holds one message.
//!
//! `T` is the first bytes of `HMAC(KS, D | C | B)`: `C` the full 4-byte
//! big-endian counter per direction (1 first), of which `c` is the low
//! byte; `D` the direction (`I` from the initiator, `R` from the
//! responder; `i`/`r` in an encrypted session). The receiver takes for `C`
//! the first counter above the last one it accepted whose low byte is `c`:
//! a replayed or reordered message then gets a counter its tag was not
//! made for. Up to 255 messages in a row may be lost (only an attacker
//! drops sealed messages: every link below is reliable).
//!
//! An encrypted session (docs/auth.md §Encryption) sends `X`, the body
//! XORed with the keystream of `D | C` under `KE`, instead of `B` (stream
//! form: under the key `x`), `T` over `X` (encrypt-then-MAC: a forgery is
//! dropped before any decryption). The lowercase `D` keeps a plain seal
//! from ever opening in an encrypted session and the other way round.
//!
//! The direction is in the MAC so a message cannot be reflected back to
//! its sender (both directions share `KS`). The two halves ([`Sealer`],
//! [`Opener`]) are separate because a link's writer and reader run in
//! separate tasks.

use std::fmt;

use super::mac;
use crate::msgpack::{self, Limits};
use crate::value::Value;

/// How a link carries sealed messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// `{s: bin(c | T16 | B)}` (encrypted: `{x: …}`): tcp, process, usb.
    Stream,
    /// `bin(c | T8 | B)`: serial links (reliable frames).
    Frame,
}

impl Form {
    /// Bytes of the truncated tag.
    pub fn tag_len(self) -> usize {
        match self {
            Form::Stream => 16,
            Form::Frame => 8,
        }
    }

    /// Bytes of counter and tag in front of the body.
    pub fn header(self) -> usize {
        1 + self.tag_len()
    }
}

/// Which side of the link a [`Session`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Initiator,
    Responder,
}

impl Role {
    /// The direction byte `D` of what this side sends (lowercase when
    /// encrypted).
    fn sends(self, encrypted: bool) -> u8 {
        let d = match self {
            Role::Initiator => b'I',
            Role::Responder => b'R',
        };
        if encrypted {
            d.to_ascii_lowercase()
        } else {
            d
        }
    }

    fn other(self) -> Role {
        match self {
            Role::Initiator => Role::Responder,
            Role::Responder => Role::Initiator,
        }
    }
}

/// The map key of a plain sealed message (stream form).
pub const SEALED: &str = "s";
/// The map key of an encrypted sealed message (stream form).
pub const ENCRYPTED: &str = "x";

/// The session key, the encryption key of an encrypted session, this
/// side's role and the link's form: split into the two halves.
pub struct Session {
    key: [u8; 32],
    cipher: Option<[u8; 32]>,
    role: Role,
    form: Form,
}

impl Session {
    pub fn new(key: [u8; 32], role: Role) -> Session {
        Session {
            key,
            cipher: None,
            role,
            form: Form::Stream,
        }
    }

    /// The same session, encrypted under `ke`.
    pub fn encrypted(mut self, ke: [u8; 32]) -> Session {
        self.cipher = Some(ke);
        self
    }

    /// The same session, carried in `form` (the link's kind decides).
    pub fn in_form(mut self, form: Form) -> Session {
        self.form = form;
        self
    }

    /// Whether messages are encrypted.
    pub fn is_encrypted(&self) -> bool {
        self.cipher.is_some()
    }

    pub fn split(self) -> (Sealer, Opener) {
        let enc = self.cipher.is_some();
        (
            Sealer {
                key: self.key,
                cipher: self.cipher,
                dir: self.role.sends(enc),
                form: self.form,
                sent: 0,
            },
            Opener {
                key: self.key,
                cipher: self.cipher,
                dir: self.role.other().sends(enc),
                form: self.form,
                last: 0,
            },
        )
    }
}

fn map_key(cipher: &Option<[u8; 32]>) -> &'static str {
    if cipher.is_some() {
        ENCRYPTED
    } else {
        SEALED
    }
}

/// Why a message could not be sealed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CounterExhausted;

impl fmt::Display for CounterExhausted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The next connection starts with fresh nonces and counters.
        f.write_str("2^32 - 1 sealed messages sent: the link closes and reconnects")
    }
}

/// Seals outgoing messages.
pub struct Sealer {
    key: [u8; 32],
    cipher: Option<[u8; 32]>,
    dir: u8,
    form: Form,
    sent: u32,
}

impl Sealer {
    /// The sealed form of `msg` under the next counter.
    pub fn seal(&mut self, msg: &Value) -> Result<Value, CounterExhausted> {
        let header = self.form.header();
        let mut blob = Vec::with_capacity(header + 64);
        blob.resize(header, 0);
        msgpack::encode(msg, &mut blob);
        let blob = Value::Bin(self.seal_body(blob)?);
        Ok(match self.form {
            Form::Stream => Value::map([(map_key(&self.cipher), blob)]),
            Form::Frame => blob,
        })
    }

    /// Fills in counter and tag of `blob` (the header's bytes, then the
    /// body), encrypting the body first in an encrypted session.
    fn seal_body(&mut self, mut blob: Vec<u8>) -> Result<Vec<u8>, CounterExhausted> {
        let counter = self.sent.checked_add(1).ok_or(CounterExhausted)?;
        self.sent = counter;
        let header = self.form.header();
        let c = counter.to_be_bytes();
        if let Some(ke) = &self.cipher {
            mac::keystream_xor(ke, self.dir, c, &mut blob[header..]);
        }
        let tag = mac::hmac(&self.key, &[&[self.dir], &c, &blob[header..]]);
        blob[0] = c[3];
        blob[1..header].copy_from_slice(&tag[..header - 1]);
        Ok(blob)
    }

    /// The counter of the last sealed message (0: none yet).
    pub fn counter(&self) -> u32 {
        self.sent
    }
}

/// Why a received message was dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejected {
    /// Not in the link's sealed form (stream: a `{s: bin}` map, encrypted
    /// `{x: bin}`; serial: a bin).
    Unsealed,
    /// Shorter than counter and tag.
    Short,
    /// The tag does not check: altered, injected, replayed, reordered, or
    /// sealed for the other direction or the other kind of session.
    BadTag,
    /// The counter would pass 2^32 − 1.
    Exhausted,
    /// Authentic, but the body is not MsgPack.
    Undecodable(String),
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejected::Unsealed => f.write_str("an unsealed message"),
            Rejected::Short => f.write_str("a sealed message shorter than its counter and tag"),
            Rejected::BadTag => f.write_str(
                "a sealed message whose tag does not check (altered, injected, replayed or reordered)",
            ),
            Rejected::Exhausted => f.write_str("a sealed message past the last counter"),
            Rejected::Undecodable(e) => write!(f, "a sealed message whose body is not MsgPack: {e}"),
        }
    }
}

/// The full counter of a message whose low byte is `c`: the first one
/// above `last` (None past 2^32 − 1).
pub fn counter_after(last: u32, c: u8) -> Option<u32> {
    let step = match c.wrapping_sub(last as u8) {
        0 => 256,
        d => u32::from(d),
    };
    last.checked_add(step)
}

/// Opens incoming messages.
pub struct Opener {
    key: [u8; 32],
    cipher: Option<[u8; 32]>,
    dir: u8,
    form: Form,
    last: u32,
}

impl Opener {
    /// The message inside `sealed`, or why it is dropped. Only an accepted
    /// message moves the counter on.
    pub fn open(&mut self, sealed: &Value) -> Result<Value, Rejected> {
        let blob = match (self.form, sealed) {
            (Form::Frame, Value::Bin(b)) => b,
            (Form::Stream, Value::Map(pairs)) => match pairs.as_slice() {
                [(Value::Str(k), Value::Bin(b))] if k == map_key(&self.cipher) => b,
                _ => return Err(Rejected::Unsealed),
            },
            _ => return Err(Rejected::Unsealed),
        };
        let (counter, body) = self.check(blob)?;
        let decoded = match &self.cipher {
            Some(ke) => {
                let mut plain = body.to_vec();
                mac::keystream_xor(ke, self.dir, counter.to_be_bytes(), &mut plain);
                msgpack::decode_exact(&plain, &Limits::default())
            }
            None => msgpack::decode_exact(body, &Limits::default()),
        };
        let msg = decoded.map_err(|e| Rejected::Undecodable(e.to_string()))?;
        self.last = counter;
        Ok(msg)
    }

    /// Counter and body of an authentic, fresh `c | T | B`.
    fn check<'b>(&self, blob: &'b [u8]) -> Result<(u32, &'b [u8]), Rejected> {
        let header = self.form.header();
        if blob.len() < header {
            return Err(Rejected::Short);
        }
        let counter = counter_after(self.last, blob[0]).ok_or(Rejected::Exhausted)?;
        let body = &blob[header..];
        let tag = mac::hmac(&self.key, &[&[self.dir], &counter.to_be_bytes(), body]);
        if !mac::ct_eq(&tag[..header - 1], &blob[1..header]) {
            return Err(Rejected::BadTag);
        }
        Ok((counter, body))
    }

    /// The last accepted counter (0: none yet).
    pub fn last(&self) -> u32 {
        self.last
    }

    /// Starts as if `last` had been accepted (tests, vectors).
    pub fn with_last(mut self, last: u32) -> Opener {
        self.last = last;
        self
    }
}

impl Sealer {
    /// Starts as if `sent` messages had been sealed (tests, vectors).
    pub fn with_counter(mut self, sent: u32) -> Sealer {
        self.sent = sent;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Sealer, Opener, Sealer, Opener) {
        let (is, io) = Session::new([7; 32], Role::Initiator).split();
        let (rs, ro) = Session::new([7; 32], Role::Responder).split();
        (is, io, rs, ro)
    }

    fn ping(i: i64) -> Value {
        Value::map([("a", Value::Array(vec!["ping".into()])), ("i", i.into())])
    }

    #[test]
    fn sealed_messages_open_in_order_on_the_other_side() {
        let (mut is, _, _, mut ro) = pair();
        for i in 0..3 {
            let s = is.seal(&ping(i)).unwrap();
            assert_eq!(ro.open(&s).unwrap(), ping(i));
        }
        assert_eq!(ro.last(), 3);
    }

    #[test]
    fn replayed_reordered_reflected_and_altered_messages_are_rejected() {
        let (mut is, mut io, _, mut ro) = pair();
        let first = is.seal(&ping(1)).unwrap();
        let second = is.seal(&ping(2)).unwrap();
        assert_eq!(ro.open(&second).unwrap(), ping(2));
        // Older or the same: taken for a counter 256 further on, whose tag
        // it does not have.
        assert_eq!(ro.open(&first), Err(Rejected::BadTag));
        assert_eq!(ro.open(&second), Err(Rejected::BadTag));
        // Reflected to its sender: the direction byte differs.
        let third = is.seal(&ping(3)).unwrap();
        assert_eq!(io.open(&third), Err(Rejected::BadTag));
        let Value::Map(mut pairs) = third else {
            panic!()
        };
        if let Value::Bin(b) = &mut pairs[0].1 {
            *b.last_mut().unwrap() ^= 1;
        }
        assert_eq!(ro.open(&Value::Map(pairs)), Err(Rejected::BadTag));
        assert_eq!(ro.open(&ping(4)), Err(Rejected::Unsealed));
        // The link goes on: the next message comes after a lost one (3).
        assert_eq!(ro.open(&is.seal(&ping(5)).unwrap()).unwrap(), ping(5));
        assert_eq!(ro.last(), 4);
    }

    #[test]
    fn the_counter_comes_from_its_low_byte_and_the_last_accepted_one() {
        assert_eq!(counter_after(0, 1), Some(1));
        assert_eq!(counter_after(255, 0), Some(256));
        // 300 = 0x12c: its own low byte means 256 further on.
        assert_eq!(counter_after(300, 0x2c), Some(556));
        assert_eq!(counter_after(300, 0x2d), Some(301));
        assert_eq!(counter_after(300, 0x2b), Some(555));
        assert_eq!(counter_after(u32::MAX - 1, 0xff), Some(u32::MAX));
        assert_eq!(counter_after(u32::MAX, 0), None);
        // Across 256 messages the counters keep in step.
        let (mut is, _, _, mut ro) = pair();
        for i in 0..600 {
            let s = is.seal(&ping(i)).unwrap();
            assert_eq!(ro.open(&s).unwrap(), ping(i));
        }
        assert_eq!(ro.last(), 600);
    }

    #[test]
    fn serial_links_seal_a_bare_bin_with_an_8_byte_tag() {
        let (mut is, _) = Session::new([7; 32], Role::Initiator)
            .in_form(Form::Frame)
            .split();
        let (_, mut ro) = Session::new([7; 32], Role::Responder)
            .in_form(Form::Frame)
            .split();
        let (mut stream, ..) = pair();
        let s = is.seal(&ping(1)).unwrap();
        let Value::Bin(b) = &s else {
            panic!("not a bin: {s:?}")
        };
        assert_eq!(b.len(), 1 + 8 + msgpack::to_vec(&ping(1)).len());
        assert_eq!(ro.open(&s).unwrap(), ping(1));
        // The stream form is not taken, and a bin is not on a stream link.
        assert_eq!(
            ro.open(&stream.seal(&ping(2)).unwrap()),
            Err(Rejected::Unsealed)
        );
        let (_, _, _, mut stream_open) = pair();
        assert_eq!(stream_open.open(&s), Err(Rejected::Unsealed));
    }

    #[test]
    fn an_encrypted_session_hides_the_body_and_drops_plain_seals() {
        let (mut is, _) = Session::new([7; 32], Role::Initiator)
            .encrypted([9; 32])
            .split();
        let (_, mut ro) = Session::new([7; 32], Role::Responder)
            .encrypted([9; 32])
            .split();
        let (mut plain, ..) = pair();
        let msg = Value::map([("d", Value::from("wifi password"))]);
        let x = is.seal(&msg).unwrap();
        let Value::Map(pairs) = &x else { panic!() };
        assert_eq!(pairs[0].0, Value::from("x"));
        let Value::Bin(b) = &pairs[0].1 else { panic!() };
        assert!(
            !b.windows(4).any(|w| w == b"wifi"),
            "the body travels in clear"
        );
        assert_eq!(ro.open(&x).unwrap(), msg);
        // A plain seal under the same session key (a stripped `e`) is
        // dropped, not read.
        assert_eq!(ro.open(&plain.seal(&msg).unwrap()), Err(Rejected::Unsealed));
        // Nor does one relabelled `x`: the direction byte is lowercase in
        // an encrypted session.
        let Value::Map(mut relabelled) = plain.seal(&msg).unwrap() else {
            panic!()
        };
        relabelled[0].0 = Value::from("x");
        assert_eq!(ro.open(&Value::Map(relabelled)), Err(Rejected::BadTag));
        // Altered ciphertext: the tag fails before anything is decrypted.
        let Value::Map(mut pairs) = is.seal(&msg).unwrap() else {
            panic!()
        };
        if let Value::Bin(b) = &mut pairs[0].1 {
            b[Form::Stream.header()] ^= 1;
        }
        assert_eq!(ro.open(&Value::Map(pairs)), Err(Rejected::BadTag));
    }

    #[test]
    fn the_last_counter_seals_and_the_next_does_not() {
        let (is, ..) = pair();
        let mut is = is.with_counter(u32::MAX - 1);
        assert!(is.seal(&ping(1)).is_ok());
        assert_eq!(is.seal(&ping(2)), Err(CounterExhausted));
    }
}
