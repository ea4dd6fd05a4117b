//! The `_hash` table: `{module name: sha256(source bytes)[:8]}` for every
//! frozen Python module. The node runtime reads it (as the frozen `_hash`
//! module, `hashes = {"name": b"<8 bytes>"}`) to tell `moat diff-update`
//! what the firmware holds; the build record and `moat build --json` show
//! the same table as 16 hex characters per module.

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Bytes of SHA-256 kept per module.
pub const HASH_LEN: usize = 8;

/// A module's hash: the first [`HASH_LEN`] bytes of SHA-256 of its source.
pub type ModuleHash = [u8; HASH_LEN];

/// The hash of a module's source bytes.
pub fn module_hash(source: &[u8]) -> ModuleHash {
    let d = Sha256::digest(source);
    let mut h = [0; HASH_LEN];
    h.copy_from_slice(&d[..HASH_LEN]);
    h
}

/// Module hashes by module name, in name order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HashTable {
    entries: BTreeMap<String, ModuleHash>,
}

impl HashTable {
    pub fn insert(&mut self, name: String, hash: ModuleHash) {
        self.entries.insert(name, hash);
    }

    pub fn get(&self, name: &str) -> Option<&ModuleHash> {
        self.entries.get(name)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &ModuleHash)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// `{name: "16 hex chars"}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.iter()
                .map(|(k, v)| (k.to_string(), serde_json::Value::String(hex::encode(v))))
                .collect(),
        )
    }

    /// Reads [`HashTable::to_json`]'s form back; `None` if malformed.
    pub fn from_json(v: &serde_json::Value) -> Option<HashTable> {
        let mut t = HashTable::default();
        for (k, v) in v.as_object()? {
            let bytes = hex::decode(v.as_str()?).ok()?;
            t.insert(k.clone(), bytes.try_into().ok()?);
        }
        Some(t)
    }

    /// Rows for the `_hash.py` template: `name` (a Python string literal)
    /// and `hash` (a Python bytes literal).
    pub fn template_rows(&self) -> Vec<BTreeMap<&'static str, String>> {
        self.iter()
            .map(|(k, v)| {
                BTreeMap::from([
                    ("name", python_str(k)),
                    ("hash", python_bytes(v)),
                    ("hex", hex::encode(v)),
                ])
            })
            .collect()
    }
}

/// A Python string literal for `s` (double quotes, escapes as needed).
pub fn python_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A Python bytes literal with every byte as `\xNN` (stable, plain ASCII).
pub fn python_bytes(b: &[u8]) -> String {
    let mut out = String::from("b\"");
    for x in b {
        out.push_str(&format!("\\x{x:02x}"));
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_first_eight_bytes_of_sha256() {
        // sha256("") = e3b0c442 98fc1c14 9afbf4c8 ...
        assert_eq!(hex::encode(module_hash(b"")), "e3b0c44298fc1c14");
    }

    #[test]
    fn json_round_trips_as_hex() {
        let mut t = HashTable::default();
        t.insert("a.b".into(), [1, 2, 3, 4, 5, 6, 7, 0xff]);
        let j = t.to_json();
        assert_eq!(j["a.b"], "01020304050607ff");
        assert_eq!(HashTable::from_json(&j), Some(t));
    }

    #[test]
    fn python_literals_escape() {
        assert_eq!(python_str("a\"b\\"), r#""a\"b\\""#);
        assert_eq!(python_bytes(&[0, 0x41]), r#"b"\x00\x41""#);
    }
}
