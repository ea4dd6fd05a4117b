//! Authenticated links (docs/auth.md, normative), sans-I/O.
//!
//! A link that authenticates starts with a mutual challenge-response over
//! the node key ([`handshake`]: the initiator's state machine, and a
//! responder for tests, fake nodes and node-to-node links), then carries
//! every message sealed with a MAC over a per-direction counter
//! ([`seal`]). Nothing here does I/O: the link layer
//! ([`crate::link`]) feeds these with the values its transport carries.

pub mod handshake;
pub mod mac;
pub mod seal;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub use handshake::{HandshakeError, Initiator, Responder};
pub use seal::{Opener, Rejected, Sealer, Session};

/// A node key: 32 random bytes shared by the node and its project.
pub type Key = [u8; 32];

/// Where the keys to try come from, read again at every handshake: a
/// `moat key rotate` that finished while a mux runs leaves a new key the
/// mux's next connection must use.
pub trait KeySource: Send + Sync {
    /// The keys to try, in order (the current one, then one a rotation
    /// left pending).
    fn keys(&self) -> Vec<Key>;
}

impl KeySource for Vec<Key> {
    fn keys(&self) -> Vec<Key> {
        self.clone()
    }
}

impl<F: Fn() -> Vec<Key> + Send + Sync> KeySource for F {
    fn keys(&self) -> Vec<Key> {
        self()
    }
}

/// What the initiator of an authenticated link needs: the keys it may use
/// and the identity the node must answer with.
#[derive(Clone)]
pub struct AuthConfig {
    pub keys: Arc<dyn KeySource>,
    /// The node's name (its `auth.n`).
    pub node: String,
    /// The project's id (`auth.p`) and name (for messages).
    pub project_id: String,
    pub project_name: String,
    /// Whether the link must be encrypted (`encrypt` in the manifest): a
    /// node that does not offer it is refused. Without it the node decides.
    pub encrypt: bool,
}

impl AuthConfig {
    pub fn new(
        keys: impl KeySource + 'static,
        node: &str,
        project_id: &str,
        project_name: &str,
    ) -> AuthConfig {
        AuthConfig {
            keys: Arc::new(keys),
            node: node.to_owned(),
            project_id: project_id.to_owned(),
            project_name: project_name.to_owned(),
            encrypt: false,
        }
    }

    /// The same, insisting on encryption when `encrypt`.
    pub fn encrypted(mut self, encrypt: bool) -> AuthConfig {
        self.encrypt = encrypt;
        self
    }
}

impl fmt::Debug for AuthConfig {
    // Never prints a key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("node", &self.node)
            .field("project_id", &self.project_id)
            .field("project_name", &self.project_name)
            .field("encrypt", &self.encrypt)
            .finish_non_exhaustive()
    }
}

impl PartialEq for AuthConfig {
    // Same identity and the same keys right now.
    fn eq(&self, other: &Self) -> bool {
        self.node == other.node
            && self.project_id == other.project_id
            && self.project_name == other.project_name
            && self.encrypt == other.encrypt
            && mac::keys_eq(&self.keys.keys(), &other.keys.keys())
    }
}

/// Who answered an authenticated link's handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// The node's name and project id (as checked) and project name (as
    /// it says: not authenticated).
    pub node: String,
    pub project_id: String,
    pub project_name: String,
    /// The largest message the node accepts on this link (its `m`), when
    /// it said.
    pub max_message: Option<u32>,
    /// Which of the [`AuthConfig`] keys it has (0: the first, the current
    /// one; 1: the next, a pending one from an unfinished rotation).
    pub key_index: usize,
    /// Whether the session is encrypted.
    pub encrypted: bool,
}

/// A link's authentication counters over its whole life.
#[derive(Debug, Default)]
pub struct AuthCounters {
    /// Sealed messages accepted.
    pub ok: AtomicU64,
    /// Messages dropped: altered, replayed, reordered, injected, unsealed.
    pub dropped: AtomicU64,
    /// Handshakes that failed (wrong identity or key, refused, no answer).
    pub failed: AtomicU64,
}

impl AuthCounters {
    pub fn snapshot(&self) -> AuthStats {
        AuthStats {
            ok: self.ok.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

/// [`AuthCounters`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AuthStats {
    pub ok: u64,
    pub dropped: u64,
    pub failed: u64,
}

/// 16 random bytes from the kernel: a handshake nonce.
pub fn nonce() -> std::io::Result<[u8; 16]> {
    let mut n = [0u8; 16];
    let mut filled = 0;
    while filled < n.len() {
        // SAFETY: writes at most the remaining bytes of `n`.
        let got = unsafe { libc::getrandom(n[filled..].as_mut_ptr().cast(), n.len() - filled, 0) };
        if got < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += got as usize;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonces_differ() {
        assert_ne!(nonce().unwrap(), nonce().unwrap());
    }

    #[test]
    fn debug_never_shows_a_key() {
        let c = AuthConfig::new(vec![[0xab; 32]], "demo", "3f", "q");
        assert!(!format!("{c:?}").contains("ab, ab") && !format!("{c:?}").contains("171"));
    }
}
