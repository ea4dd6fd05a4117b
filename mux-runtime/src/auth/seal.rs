//! Sealed messages (docs/auth.md §Sealed messages): after the handshake
//! every message travels as `{s: bin(C | T | B)}`, `B` its MsgPack bytes,
//! `C` a 4-byte big-endian counter per direction (1 first), `T` the first
//! 16 bytes of `HMAC(KS, D | C | B)`, `D` the direction (`I` from the
//! initiator, `R` from the responder).
//!
//! An encrypted session (docs/auth.md §Encryption) sends `{x: bin(C | T |
//! X)}` instead: `X` the body XORed with the keystream of `D | C` under
//! `KE`, `T` over `X` (encrypt-then-MAC: a forgery is dropped before any
//! decryption). The map key differs so neither kind is ever taken for the
//! other: a plain session drops `x`, an encrypted one drops `s`.
//!
//! The direction byte is in the MAC so a message cannot be reflected back
//! to its sender (both directions share `KS`); the counter so it cannot be
//! replayed or reordered: a receiver accepts only counters above the last
//! one it accepted. The two halves ([`Sealer`], [`Opener`]) are separate
//! because a link's writer and reader run in separate tasks.

use std::fmt;

use super::mac;
use crate::msgpack::{self, Limits};
use crate::value::Value;

/// Bytes of counter and tag in front of the body.
pub const HEADER: usize = 4 + TAG;
/// Bytes of the truncated tag.
pub const TAG: usize = 16;

/// Which side of the link a [`Session`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Initiator,
    Responder,
}

impl Role {
    /// The direction byte `D` of what this side sends.
    fn sends(self) -> u8 {
        match self {
            Role::Initiator => b'I',
            Role::Responder => b'R',
        }
    }

    fn other(self) -> Role {
        match self {
            Role::Initiator => Role::Responder,
            Role::Responder => Role::Initiator,
        }
    }
}

/// The map key of a plain sealed message.
pub const SEALED: &str = "s";
/// The map key of an encrypted sealed message.
pub const ENCRYPTED: &str = "x";

/// The session key, the encryption key of an encrypted session, and this
/// side's role: split into the two halves.
pub struct Session {
    key: [u8; 32],
    cipher: Option<[u8; 32]>,
    role: Role,
}

impl Session {
    pub fn new(key: [u8; 32], role: Role) -> Session {
        Session {
            key,
            cipher: None,
            role,
        }
    }

    /// The same session, encrypted under `ke`.
    pub fn encrypted(mut self, ke: [u8; 32]) -> Session {
        self.cipher = Some(ke);
        self
    }

    /// Whether messages are encrypted.
    pub fn is_encrypted(&self) -> bool {
        self.cipher.is_some()
    }

    pub fn split(self) -> (Sealer, Opener) {
        (
            Sealer {
                key: self.key,
                cipher: self.cipher,
                dir: self.role.sends(),
                sent: 0,
            },
            Opener {
                key: self.key,
                cipher: self.cipher,
                dir: self.role.other().sends(),
                last: 0,
            },
        )
    }
}

impl Session {
    fn map_key(cipher: &Option<[u8; 32]>) -> &'static str {
        if cipher.is_some() {
            ENCRYPTED
        } else {
            SEALED
        }
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
    sent: u32,
}

impl Sealer {
    /// `{s: bin(C | T | B)}` (encrypted: `{x: bin(C | T | X)}`) for `msg`
    /// under the next counter.
    pub fn seal(&mut self, msg: &Value) -> Result<Value, CounterExhausted> {
        let mut blob = Vec::with_capacity(HEADER + 64);
        blob.resize(HEADER, 0);
        msgpack::encode(msg, &mut blob);
        let key = Session::map_key(&self.cipher);
        self.seal_body(blob)
            .map(|b| Value::map([(key, Value::Bin(b))]))
    }

    /// Fills in counter and tag of `blob` (`HEADER` bytes, then the body),
    /// encrypting the body first in an encrypted session.
    fn seal_body(&mut self, mut blob: Vec<u8>) -> Result<Vec<u8>, CounterExhausted> {
        let counter = self.sent.checked_add(1).ok_or(CounterExhausted)?;
        self.sent = counter;
        let c = counter.to_be_bytes();
        if let Some(ke) = &self.cipher {
            mac::keystream_xor(ke, self.dir, c, &mut blob[HEADER..]);
        }
        let tag = mac::hmac(&self.key, &[&[self.dir], &c, &blob[HEADER..]]);
        blob[..4].copy_from_slice(&c);
        blob[4..HEADER].copy_from_slice(&tag[..TAG]);
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
    /// Not a `{s: bin}` map (encrypted session: `{x: bin}`).
    Unsealed,
    /// Shorter than counter and tag.
    Short,
    /// The tag does not check: altered, injected, or sealed for the other
    /// direction.
    BadTag,
    /// A counter not above the last accepted one: replayed or reordered
    /// (or 0).
    Stale { counter: u32, last: u32 },
    /// Authentic, but the body is not MsgPack.
    Undecodable(String),
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejected::Unsealed => f.write_str("an unsealed message"),
            Rejected::Short => f.write_str("a sealed message shorter than its counter and tag"),
            Rejected::BadTag => f.write_str("a sealed message whose tag does not check"),
            Rejected::Stale { counter, last } => write!(
                f,
                "a sealed message with counter {counter}, not above the last accepted {last} (replayed or reordered)"
            ),
            Rejected::Undecodable(e) => write!(f, "a sealed message whose body is not MsgPack: {e}"),
        }
    }
}

/// Opens incoming messages.
pub struct Opener {
    key: [u8; 32],
    cipher: Option<[u8; 32]>,
    dir: u8,
    last: u32,
}

impl Opener {
    /// The message inside `sealed`, or why it is dropped. Only an accepted
    /// message moves the counter on.
    pub fn open(&mut self, sealed: &Value) -> Result<Value, Rejected> {
        let want = Session::map_key(&self.cipher);
        let blob = match sealed {
            Value::Map(pairs) => match pairs.as_slice() {
                [(Value::Str(k), Value::Bin(b))] if k == want => b,
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

    /// Counter and body of an authentic, fresh `C | T | B`.
    fn check<'b>(&self, blob: &'b [u8]) -> Result<(u32, &'b [u8]), Rejected> {
        if blob.len() < HEADER {
            return Err(Rejected::Short);
        }
        let c: [u8; 4] = blob[..4].try_into().expect("4 bytes");
        let body = &blob[HEADER..];
        let tag = mac::hmac(&self.key, &[&[self.dir], &c, body]);
        if !mac::ct_eq(&tag[..TAG], &blob[4..HEADER]) {
            return Err(Rejected::BadTag);
        }
        let counter = u32::from_be_bytes(c);
        if counter <= self.last {
            return Err(Rejected::Stale {
                counter,
                last: self.last,
            });
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
        assert!(matches!(
            ro.open(&first),
            Err(Rejected::Stale {
                counter: 1,
                last: 2
            })
        ));
        assert!(matches!(ro.open(&second), Err(Rejected::Stale { .. })));
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
        // The link goes on.
        assert_eq!(ro.open(&is.seal(&ping(5)).unwrap()).unwrap(), ping(5));
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
        // Altered ciphertext: the tag fails before anything is decrypted.
        let Value::Map(mut pairs) = is.seal(&msg).unwrap() else {
            panic!()
        };
        if let Value::Bin(b) = &mut pairs[0].1 {
            b[HEADER] ^= 1;
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
