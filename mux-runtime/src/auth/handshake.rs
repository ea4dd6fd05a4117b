//! The handshake (docs/auth.md §Handshake): three plain maps, then both
//! sides hold the session key.
//!
//! 1. I → R `{h: 1, c: NI}`
//! 2. R → I `{h: 2, c: NR, n, p, q, m, t: TR}` (+ `e: true` when R's link
//!    encrypts)
//! 3. I → R `{h: 3, t: TI}`
//!
//! The initiator learns who answered before it proves anything: it checks
//! the identity first (a node of another project is refused by name, even
//! when it shares the key), then `TR` with each key it may use, so a
//! rotation left half done is found without a second connection. The
//! responder proves first because it is the one that can be reached by
//! strangers: the initiator's proof then tells nothing a stranger can use
//! against another link (fresh `NR` each time).

use std::fmt;

use super::mac;
use super::seal::{Role, Session};
use super::{AuthConfig, Key, Peer};
use crate::error::WellKnown;
use crate::value::Value;

/// `_AuErr`, as the proxy a failing responder sends.
pub const AUTH_ERROR: &str = "_AuErr";

/// Why the initiator gave up on a handshake, worded for the user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandshakeError {
    /// Another node (or another project's) answered.
    WrongIdentity(Box<Mismatch>),
    /// The right node, but none of our keys checks its proof.
    WrongKey { node: String },
    /// The node answered `_AuErr` with this reason.
    Refused { node: String, reason: String },
    /// The node answered something other than step 2 (an old runtime's
    /// error for a map it does not know, or auth is off on it).
    NotAuthenticating { node: String, answer: String },
    /// A step 2 missing a field or with a field of the wrong type.
    Malformed { node: String, why: String },
    /// No step 2 within the connect timeout.
    NoAnswer {
        node: String,
        waited: std::time::Duration,
    },
    /// The link closed before step 2.
    Closed { node: String },
    /// The manifest says `encrypt = true` and the node's step 2 does not
    /// offer encryption.
    NotEncrypting { node: String },
}

impl HandshakeError {
    /// The message, with `place` (e.g. `port 27587`, `/dev/ttyUSB0`)
    /// where it says who answered.
    pub fn describe(&self, place: &str) -> String {
        match self {
            HandshakeError::WrongIdentity(_) => format!("{place} {self}"),
            _ => self.to_string(),
        }
    }

    /// Whether the node answered as an authenticating node would, only not
    /// as the one we meant (identity or key): trying again cannot help.
    pub fn is_rejection(&self) -> bool {
        matches!(
            self,
            HandshakeError::WrongIdentity(_)
                | HandshakeError::WrongKey { .. }
                | HandshakeError::NotEncrypting { .. }
        )
    }
}

/// Who answered and who was meant to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    pub node: String,
    pub project_id: String,
    /// `None`: the node did not say (older runtime).
    pub project_name: Option<String>,
    pub want_node: String,
    pub want_project_id: String,
    pub want_project_name: String,
}

const OLD_OR_OFF: &str =
    "its firmware predates authenticated links (reflash it) or auth is off on it";

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::WrongIdentity(m) => {
                let Mismatch {
                    node,
                    project_id,
                    project_name,
                    want_node,
                    want_project_id,
                    want_project_name,
                } = &**m;
                let theirs = match project_name {
                    Some(name) => format!("project '{name}' (id {project_id})"),
                    None => format!("project id {project_id}"),
                };
                write!(
                    f,
                    "answers node '{node}' of {theirs}, not node '{want_node}' of this project '{want_project_name}' (id {want_project_id}): is the address in moat.toml right?"
                )
            }
            HandshakeError::WrongKey { node } => write!(
                f,
                "node '{node}' rejected: wrong key (the node has another key than this project's for it: `moat flash` or `moat cfg upload --repl` gives it this one)"
            ),
            HandshakeError::Refused { node, reason } => {
                write!(f, "node '{node}' refused authentication: {reason}")
            }
            HandshakeError::NotAuthenticating { node, answer } => write!(
                f,
                "node '{node}' answered the auth handshake with {answer}: {OLD_OR_OFF}"
            ),
            HandshakeError::Malformed { node, why } => {
                write!(f, "node '{node}' sent a malformed auth handshake: {why}")
            }
            HandshakeError::NoAnswer { node, waited } => write!(
                f,
                "node '{node}' did not answer the auth handshake within {waited:?}: {OLD_OR_OFF}"
            ),
            HandshakeError::NotEncrypting { node } => write!(
                f,
                "node '{node}' does not encrypt this link and moat.toml says it must (encrypt = true, the default for a tcp node listening beyond loopback): \
                 its moat.cfg predates that, run `moat cfg upload` (or `moat cfg upload --repl`)"
            ),
            HandshakeError::Closed { node } => write!(
                f,
                "node '{node}' closed the link during the auth handshake: {OLD_OR_OFF}, or it has no key (run `moat cfg upload`)"
            ),
        }
    }
}

impl std::error::Error for HandshakeError {}

/// What a successful handshake leaves the initiator.
pub struct Established {
    /// Step 3, to send.
    pub proof: Value,
    pub session: Session,
    pub peer: Peer,
}

/// The initiator's side: sends step 1, checks step 2, answers step 3.
pub struct Initiator {
    ni: [u8; 16],
    keys: Vec<Key>,
    encrypt: bool,
    node: String,
    project_id: String,
    project_name: String,
}

impl Initiator {
    /// With nonce `ni` (16 random bytes: [`super::nonce`]); the keys are
    /// read from `config` now.
    pub fn new(config: &AuthConfig, ni: [u8; 16]) -> Initiator {
        Initiator {
            ni,
            keys: config.keys.keys(),
            encrypt: config.encrypt,
            node: config.node.clone(),
            project_id: config.project_id.clone(),
            project_name: config.project_name.clone(),
        }
    }

    /// Step 1, `{h: 1, c: NI}`.
    pub fn hello(&self) -> Value {
        Value::map([("h", Value::from(1)), ("c", Value::Bin(self.ni.to_vec()))])
    }

    /// Checks the node's step 2; on success step 3 and the session.
    pub fn on_challenge(&self, msg: &Value) -> Result<Established, HandshakeError> {
        if let Some(reason) = auth_error(msg) {
            return Err(HandshakeError::Refused {
                node: self.node.clone(),
                reason,
            });
        }
        if msg.get("h").and_then(Value::as_int) != Some(2) {
            return Err(HandshakeError::NotAuthenticating {
                node: self.node.clone(),
                answer: msg.to_string(),
            });
        }
        let malformed = |why: &str| HandshakeError::Malformed {
            node: self.node.clone(),
            why: why.to_owned(),
        };
        let nr = bin(msg, "c", 16).ok_or_else(|| malformed("c is not 16 bytes"))?;
        let tr = bin(msg, "t", 32).ok_or_else(|| malformed("t is not 32 bytes"))?;
        let name = msg
            .get("n")
            .and_then(Value::as_str)
            .ok_or_else(|| malformed("n is not a string"))?;
        let project = msg
            .get("p")
            .and_then(Value::as_str)
            .ok_or_else(|| malformed("p is not a string"))?;
        if name != self.node || project != self.project_id {
            return Err(HandshakeError::WrongIdentity(Box::new(Mismatch {
                node: name.to_owned(),
                project_id: project.to_owned(),
                project_name: msg.get("q").and_then(Value::as_str).map(str::to_owned),
                want_node: self.node.clone(),
                want_project_id: self.project_id.clone(),
                want_project_name: self.project_name.clone(),
            })));
        }
        // Every key is tried (no early exit), so timing does not tell
        // which one the node has.
        let mut found = None;
        for (i, key) in self.keys.iter().enumerate() {
            let expect = mac::responder_proof(key, &self.ni, nr, name, project);
            if mac::ct_eq(&expect, tr) && found.is_none() {
                found = Some(i);
            }
        }
        let Some(key_index) = found else {
            return Err(HandshakeError::WrongKey {
                node: self.node.clone(),
            });
        };
        let key = &self.keys[key_index];
        // The responder decides (its link's `e`); we only insist. Nothing
        // is gained by an attacker who strips `e`: we refuse, or the
        // responder drops our plain seals; one who adds it gets our
        // encrypted seals dropped by a plain responder.
        let encrypted = matches!(msg.get("e"), Some(Value::Bool(true)));
        if self.encrypt && !encrypted {
            return Err(HandshakeError::NotEncrypting {
                node: self.node.clone(),
            });
        }
        let mut session = Session::new(mac::session_key(key, &self.ni, nr), Role::Initiator);
        if encrypted {
            session = session.encrypted(mac::encryption_key(key, &self.ni, nr));
        }
        let ti = mac::initiator_proof(key, &self.ni, nr);
        let max_message = msg
            .get("m")
            .and_then(Value::as_int)
            .and_then(|m| u32::try_from(m).ok());
        Ok(Established {
            proof: Value::map([("h", Value::from(3)), ("t", Value::Bin(ti.to_vec()))]),
            session,
            peer: Peer {
                node: name.to_owned(),
                project_id: project.to_owned(),
                project_name: msg
                    .get("q")
                    .and_then(Value::as_str)
                    .unwrap_or(&self.project_name)
                    .to_owned(),
                max_message,
                key_index,
                encrypted,
            },
        })
    }
}

/// The reason of an `{e: _AuErr, d: [reason]}` message.
pub fn auth_error(msg: &Value) -> Option<String> {
    match msg.get("e") {
        Some(Value::Proxy(p)) if p == AUTH_ERROR => Some(
            msg.get("d")
                .and_then(Value::as_array)
                .and_then(|d| d.first())
                .map(|r| match r {
                    Value::Str(s) => s.clone(),
                    other => other.to_string(),
                })
                .unwrap_or_else(|| "no reason given".to_owned()),
        ),
        _ => None,
    }
}

/// `{e: _AuErr, d: [reason]}`.
pub fn auth_error_message(reason: &str) -> Value {
    debug_assert_eq!(WellKnown::Auth.wire_name(), AUTH_ERROR);
    Value::map([
        ("e", Value::Proxy(AUTH_ERROR.to_owned())),
        ("d", Value::Array(vec![Value::from(reason)])),
    ])
}

fn bin<'v>(msg: &'v Value, key: &str, len: usize) -> Option<&'v [u8]> {
    match msg.get(key) {
        Some(Value::Bin(b)) if b.len() == len => Some(b),
        _ => None,
    }
}

/// What the responder does with one message.
#[derive(Debug)]
pub enum Step {
    /// Send this (step 2) and wait for step 3.
    Reply(Value),
    /// Authenticated: seal from now on.
    Done(SessionBox),
    /// Send this `_AuErr` once and close; nothing the peer sent runs.
    Fail(Value),
}

/// A [`Session`] in a [`Step`] (Debug without the key).
pub struct SessionBox(pub Session);

impl fmt::Debug for SessionBox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Session")
    }
}

enum Waiting {
    Hello,
    Proof { ni: Vec<u8> },
    Over,
}

/// The responder's side (a node's; here for tests, fake nodes and
/// node-to-node links on the host).
pub struct Responder {
    key: Key,
    name: String,
    project_id: String,
    project_name: String,
    max_message: u32,
    nr: [u8; 16],
    encrypt: bool,
    waiting: Waiting,
}

impl Responder {
    /// With nonce `nr` (16 random bytes: [`super::nonce`]).
    pub fn new(
        key: Key,
        name: &str,
        project_id: &str,
        project_name: &str,
        max_message: u32,
        nr: [u8; 16],
    ) -> Responder {
        Responder {
            key,
            name: name.to_owned(),
            project_id: project_id.to_owned(),
            project_name: project_name.to_owned(),
            max_message,
            nr,
            encrypt: false,
            waiting: Waiting::Hello,
        }
    }

    /// Offers (and then uses) an encrypted session, as a node whose link
    /// has `e` true.
    pub fn encrypting(mut self) -> Responder {
        self.encrypt = true;
        self
    }

    /// The next message from the initiator.
    pub fn on_message(&mut self, msg: &Value) -> Step {
        let h = msg.get("h").and_then(Value::as_int);
        match (std::mem::replace(&mut self.waiting, Waiting::Over), h) {
            (Waiting::Hello, Some(1)) => match bin(msg, "c", 16) {
                Some(ni) => {
                    let ni = ni.to_vec();
                    let reply = self.challenge(&ni);
                    self.waiting = Waiting::Proof { ni };
                    Step::Reply(reply)
                }
                None => Step::Fail(auth_error_message("malformed auth handshake step 1")),
            },
            (Waiting::Proof { ni }, Some(3)) => {
                let expect = mac::initiator_proof(&self.key, &ni, &self.nr);
                match bin(msg, "t", 32) {
                    Some(t) if mac::ct_eq(&expect, t) => {
                        let mut s = Session::new(
                            mac::session_key(&self.key, &ni, &self.nr),
                            Role::Responder,
                        );
                        if self.encrypt {
                            s = s.encrypted(mac::encryption_key(&self.key, &ni, &self.nr));
                        }
                        Step::Done(SessionBox(s))
                    }
                    _ => Step::Fail(auth_error_message("wrong key")),
                }
            }
            (Waiting::Over, _) => Step::Fail(auth_error_message("handshake already over")),
            (_, _) if msg.get("a").is_some() => {
                Step::Fail(auth_error_message("request before authentication"))
            }
            (Waiting::Hello, _) => Step::Fail(auth_error_message("expected auth handshake step 1")),
            (Waiting::Proof { .. }, _) => {
                Step::Fail(auth_error_message("expected auth handshake step 3"))
            }
        }
    }

    fn challenge(&self, ni: &[u8]) -> Value {
        let tr = mac::responder_proof(&self.key, ni, &self.nr, &self.name, &self.project_id);
        let mut m = vec![
            ("h", Value::from(2)),
            ("c", Value::Bin(self.nr.to_vec())),
            ("n", Value::from(self.name.as_str())),
            ("p", Value::from(self.project_id.as_str())),
            ("q", Value::from(self.project_name.as_str())),
            ("m", Value::from(self.max_message)),
            ("t", Value::Bin(tr.to_vec())),
        ];
        if self.encrypt {
            m.push(("e", Value::Bool(true)));
        }
        Value::map(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(keys: Vec<Key>) -> AuthConfig {
        AuthConfig::new(keys, "demo", "9a", "q")
    }

    fn run(i: &Initiator, r: &mut Responder) -> Result<Established, HandshakeError> {
        let Step::Reply(challenge) = r.on_message(&i.hello()) else {
            panic!("no challenge")
        };
        i.on_challenge(&challenge)
    }

    #[test]
    fn matching_keys_agree_on_a_session() {
        let i = Initiator::new(&config(vec![[1; 32]]), [2; 16]);
        let mut r = Responder::new([1; 32], "demo", "9a", "q", 1024, [3; 16]);
        let est = run(&i, &mut r).unwrap();
        assert_eq!(est.peer.max_message, Some(1024));
        assert_eq!(est.peer.key_index, 0);
        let Step::Done(SessionBox(rs)) = r.on_message(&est.proof) else {
            panic!("responder did not accept the proof")
        };
        let (mut seal, _) = est.session.split();
        let (_, mut open) = rs.split();
        let msg = Value::map([("i", Value::from(2))]);
        assert_eq!(open.open(&seal.seal(&msg).unwrap()).unwrap(), msg);
    }

    #[test]
    fn encryption_is_the_responders_choice_and_the_initiator_can_insist() {
        // The node encrypts: a host that did not ask goes along.
        let i = Initiator::new(&config(vec![[1; 32]]), [2; 16]);
        let mut r = Responder::new([1; 32], "demo", "9a", "q", 1024, [3; 16]).encrypting();
        let est = run(&i, &mut r).unwrap();
        assert!(est.session.is_encrypted());
        let Step::Done(SessionBox(rs)) = r.on_message(&est.proof) else {
            panic!()
        };
        assert!(rs.is_encrypted());
        let (mut seal, _) = est.session.split();
        let (_, mut open) = rs.split();
        let msg = Value::map([("i", Value::from(2))]);
        assert_eq!(open.open(&seal.seal(&msg).unwrap()).unwrap(), msg);
        // A host that insists refuses a node that does not offer it.
        let i = Initiator::new(&config(vec![[1; 32]]).encrypted(true), [2; 16]);
        let mut r = Responder::new([1; 32], "demo", "9a", "q", 1024, [3; 16]);
        let e = run(&i, &mut r).err().unwrap();
        assert_eq!(
            e,
            HandshakeError::NotEncrypting {
                node: "demo".into()
            }
        );
        assert!(e.to_string().contains("moat cfg upload"), "{e}");
    }

    #[test]
    fn a_pending_key_that_checks_is_reported() {
        let i = Initiator::new(&config(vec![[1; 32], [9; 32]]), [2; 16]);
        let mut r = Responder::new([9; 32], "demo", "9a", "q", 512, [3; 16]);
        assert_eq!(run(&i, &mut r).unwrap().peer.key_index, 1);
    }

    #[test]
    fn another_key_is_named_wrong_key() {
        let i = Initiator::new(&config(vec![[1; 32]]), [2; 16]);
        let mut r = Responder::new([8; 32], "demo", "9a", "q", 1024, [3; 16]);
        let e = run(&i, &mut r).err().unwrap();
        assert_eq!(
            e,
            HandshakeError::WrongKey {
                node: "demo".into()
            }
        );
        assert!(e.to_string().starts_with("node 'demo' rejected: wrong key"));
    }

    #[test]
    fn another_project_is_refused_with_both_names_even_with_the_same_key() {
        let i = Initiator::new(&config(vec![[1; 32]]), [2; 16]);
        let mut r = Responder::new([1; 32], "demo", "3f", "q", 1024, [3; 16]);
        let e = run(&i, &mut r).err().unwrap();
        assert!(
            e.describe("port 27587").starts_with(
                "port 27587 answers node 'demo' of project 'q' (id 3f), not node 'demo' of this project 'q' (id 9a)"
            ),
            "{e}"
        );
    }

    #[test]
    fn a_wrong_proof_or_a_request_first_gets_auerr() {
        let i = Initiator::new(&config(vec![[1; 32]]), [2; 16]);
        let mut r = Responder::new([1; 32], "demo", "9a", "q", 1024, [3; 16]);
        run(&i, &mut r).unwrap();
        let bad = Value::map([("h", Value::from(3)), ("t", Value::Bin(vec![0; 32]))]);
        let Step::Fail(e) = r.on_message(&bad) else {
            panic!()
        };
        assert_eq!(auth_error(&e).as_deref(), Some("wrong key"));
        let mut r = Responder::new([1; 32], "demo", "9a", "q", 1024, [3; 16]);
        let req = Value::map([("a", Value::Array(vec!["ping".into()])), ("i", 2.into())]);
        let Step::Fail(e) = r.on_message(&req) else {
            panic!()
        };
        assert_eq!(
            auth_error(&e).as_deref(),
            Some("request before authentication")
        );
    }

    #[test]
    fn an_auerr_or_an_old_node_answer_is_told_apart() {
        let i = Initiator::new(&config(vec![[1; 32]]), [2; 16]);
        let e = i
            .on_challenge(&auth_error_message("auth off"))
            .err()
            .unwrap();
        assert!(matches!(e, HandshakeError::Refused { .. }));
        let e = i
            .on_challenge(&Value::map([("e", Value::from("E:KeyError('a')"))]))
            .err()
            .unwrap();
        assert!(matches!(e, HandshakeError::NotAuthenticating { .. }));
    }
}
