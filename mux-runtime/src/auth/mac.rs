//! HMAC-SHA256 with the labels of docs/auth.md, and a compare that takes
//! the same time wherever the inputs differ (a tag checked byte by byte
//! with an early exit would tell an attacker how many leading bytes of a
//! forgery are right).

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Label of the responder's proof `TR`.
pub const LABEL_R: &[u8] = b"moat/1 R";
/// Label of the initiator's proof `TI`.
pub const LABEL_I: &[u8] = b"moat/1 I";
/// Label of the session key `KS`.
pub const LABEL_S: &[u8] = b"moat/1 S";
/// Label of the encryption key `KE`.
pub const LABEL_E: &[u8] = b"moat/1 E";

/// `HMAC(key, parts[0] | parts[1] | …)`.
pub fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC takes keys of any length; ours are 32 bytes.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

/// `TR = HMAC(K, "moat/1 R" | NI | NR | NAME | 0x00 | PROJECT)`.
pub fn responder_proof(key: &[u8], ni: &[u8], nr: &[u8], name: &str, project: &str) -> [u8; 32] {
    hmac(
        key,
        &[LABEL_R, ni, nr, name.as_bytes(), &[0], project.as_bytes()],
    )
}

/// `TI = HMAC(K, "moat/1 I" | NR | NI)`.
pub fn initiator_proof(key: &[u8], ni: &[u8], nr: &[u8]) -> [u8; 32] {
    hmac(key, &[LABEL_I, nr, ni])
}

/// `KS = HMAC(K, "moat/1 S" | NI | NR)`.
pub fn session_key(key: &[u8], ni: &[u8], nr: &[u8]) -> [u8; 32] {
    hmac(key, &[LABEL_S, ni, nr])
}

/// `KE = HMAC(K, "moat/1 E" | NI | NR)`: the key of an encrypted
/// session's keystream (a key of its own, not `KS`: the MAC key never
/// doubles as a cipher key).
pub fn encryption_key(key: &[u8], ni: &[u8], nr: &[u8]) -> [u8; 32] {
    hmac(key, &[LABEL_E, ni, nr])
}

/// XORs `data` with the keystream of the message `dir | counter`: block
/// `j` (32 bytes) is `HMAC(KE, D | C | J)`, `J` 4 bytes big-endian from 0.
/// The same call encrypts and decrypts.
pub fn keystream_xor(ke: &[u8; 32], dir: u8, counter: [u8; 4], data: &mut [u8]) {
    // Keyed once: each block then costs its own two compressions, not the
    // key's two padded blocks again.
    let keyed = <Hmac<Sha256> as Mac>::new_from_slice(ke).expect("HMAC takes any key length");
    for (j, chunk) in data.chunks_mut(32).enumerate() {
        let mut m = keyed.clone();
        m.update(&[dir]);
        m.update(&counter);
        m.update(&(j as u32).to_be_bytes());
        let block: [u8; 32] = m.finalize().into_bytes().into();
        for (d, k) in chunk.iter_mut().zip(block) {
            *d ^= k;
        }
    }
}

/// Equal bytes, in time independent of where they differ.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // Keep the optimiser from turning the fold back into an early exit.
    std::hint::black_box(diff) == 0
}

/// Two key lists equal (in constant time per key).
pub fn keys_eq(a: &[super::Key], b: &[super::Key]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| ct_eq(x, y))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        let t = hmac(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        assert_eq!(
            hex::encode(t),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn the_keystream_is_its_own_inverse_and_differs_per_counter_and_direction() {
        let ke = [5u8; 32];
        let plain: Vec<u8> = (0..70).collect();
        let mut x = plain.clone();
        keystream_xor(&ke, b'I', [0, 0, 0, 1], &mut x);
        assert_ne!(x, plain);
        let mut y = plain.clone();
        keystream_xor(&ke, b'I', [0, 0, 0, 2], &mut y);
        assert_ne!(x, y);
        let mut z = plain.clone();
        keystream_xor(&ke, b'R', [0, 0, 0, 1], &mut z);
        assert_ne!(x, z);
        keystream_xor(&ke, b'I', [0, 0, 0, 1], &mut x);
        assert_eq!(x, plain);
    }

    #[test]
    fn ct_eq_needs_same_length_and_bytes() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }
}
