//! What a node imports: its answer to `sys.up.mods` (node-runtime
//! `update.py`), put together from the parts it sends.
//!
//! The node reports its frozen `_hash` table (unless the host already
//! knows it: the host sends the table's digest `t` and the node leaves the
//! table out when it matches), its module search order (the `sys.path`
//! entries on its filesystem plus `.frozen`), every module file in those
//! folders with its hash, and the ledger of modules diff-update put there.

use crate::hash_table::{HashTable, ModuleHash, HASH_LEN};
use anyhow::{bail, Context};
use mux_runtime::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;

/// The firmware's entry in a node's search order.
pub const FROZEN: &str = ".frozen";

/// The ledger file on the node: modules diff-update put there that the
/// firmware lacks, one name a line (so they can be removed later without
/// touching the user's own files).
pub const LEDGER: &str = "moat.upd";

/// Suffix of a file being uploaded (a leftover means an interrupted run).
pub const TEMP_SUFFIX: &str = ".moat-tmp";

/// The `(version, sub-version)` of `.mpy` files a node with
/// `sys.implementation._mpy == mpy` loads.
pub fn mpy_version(mpy: u32) -> (u32, u32) {
    (mpy & 0xff, (mpy >> 8) & 3)
}

/// A module file's form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Form {
    /// `NAME.py`: source.
    Py,
    /// `NAME.mpy`: compiled by mpy-cross.
    Mpy,
}

impl Form {
    pub fn ext(self) -> &'static str {
        match self {
            Form::Py => "py",
            Form::Mpy => "mpy",
        }
    }

    pub fn other(self) -> Form {
        match self {
            Form::Py => Form::Mpy,
            Form::Mpy => Form::Py,
        }
    }
}

/// A file in one of the node's module folders.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeFile {
    /// Path on the node's filesystem (`counter.py`, `lib/x.mpy`).
    pub path: String,
    /// `sha256(content)[:8]`.
    pub hash: ModuleHash,
}

impl NodeFile {
    /// The folder (`""` for the root) and the file name.
    pub fn split(&self) -> (&str, &str) {
        match self.path.rsplit_once('/') {
            Some((d, f)) => (d, f),
            None => ("", self.path.as_str()),
        }
    }

    /// The module this file provides and its form; `None` for other files
    /// (temporary uploads).
    pub fn module(&self) -> Option<(&str, Form)> {
        let (_, f) = self.split();
        if let Some(m) = f.strip_suffix(".py") {
            Some((m, Form::Py))
        } else {
            f.strip_suffix(".mpy").map(|m| (m, Form::Mpy))
        }
        .filter(|(m, _)| !m.is_empty())
    }

    pub fn is_temp(&self) -> bool {
        self.path.ends_with(TEMP_SUFFIX)
    }
}

/// Everything the host needs to know about what a node imports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeTable {
    /// The firmware's `_hash` table.
    pub frozen: HashTable,
    /// Where the node looks for a module, first first: folders on its
    /// filesystem (`""` = the root, `lib`) and [`FROZEN`].
    pub search: Vec<String>,
    /// Module files (and leftover temporary files) in those folders.
    pub files: Vec<NodeFile>,
    /// Modules diff-update put on the node that the firmware lacks.
    pub ledger: BTreeSet<String>,
    /// The `.mpy` version the node loads (`sys.implementation._mpy`:
    /// version in the low byte, sub-version in bits 8–9).
    pub mpy: Option<u32>,
}

/// The digest of a frozen table, as the node computes it: SHA-256 over
/// `name \0 hash` in name order, first 8 bytes.
pub fn digest(t: &HashTable) -> ModuleHash {
    let mut h = Sha256::new();
    for (name, hash) in t.iter() {
        h.update(name.as_bytes());
        h.update([0]);
        h.update(hash);
    }
    let mut out = [0; HASH_LEN];
    out.copy_from_slice(&h.finalize()[..HASH_LEN]);
    out
}

fn hash_of(v: &Value, what: &str) -> anyhow::Result<ModuleHash> {
    match v {
        Value::Bin(b) if b.len() == HASH_LEN => {
            let mut h = [0; HASH_LEN];
            h.copy_from_slice(b);
            Ok(h)
        }
        _ => bail!("{what}: expected {HASH_LEN} bytes, got {}", v.type_name()),
    }
}

fn text(v: &Value, what: &str) -> anyhow::Result<String> {
    v.as_str()
        .map(str::to_owned)
        .with_context(|| format!("{what}: expected a string, got {}", v.type_name()))
}

/// Puts the parts of a `sys.up.mods` answer together. `known` is the
/// frozen table the host sent the digest of (used when the node left its
/// table out).
#[derive(Debug)]
pub struct Assembler {
    known: Option<HashTable>,
    table: NodeTable,
    frozen_digest: Option<ModuleHash>,
    got_frozen: bool,
    /// Offset of the next part to ask for; `None` once complete.
    next: Option<u64>,
    parts: usize,
}

/// Parts beyond which the node's answer is not followed (a node whose
/// table does not shrink would otherwise be asked forever).
const MAX_PARTS: usize = 1000;

impl Assembler {
    pub fn new(known: Option<HashTable>) -> Assembler {
        Assembler {
            known,
            table: NodeTable::default(),
            frozen_digest: None,
            got_frozen: false,
            next: Some(0),
            parts: 0,
        }
    }

    /// The `sys.up.mods` arguments for the next part; `None` when done.
    pub fn request(&self) -> Option<Value> {
        let o = self.next?;
        let mut kw = vec![("o", Value::from(o))];
        if let Some(k) = &self.known {
            kw.push(("t", Value::Bin(digest(k).to_vec())));
        }
        Some(Value::map(kw))
    }

    /// Takes one part of the answer.
    pub fn feed(&mut self, part: &Value) -> anyhow::Result<()> {
        let Some(at) = self.next else {
            bail!("the module table was already complete");
        };
        self.parts += 1;
        if !matches!(part, Value::Map(_)) {
            bail!("sys.up.mods answered {} instead of a map", part.type_name());
        }
        let t = hash_of(part.get("t").context("sys.up.mods: no `t`")?, "t")?;
        if self.frozen_digest.is_some_and(|d| d != t) {
            bail!("the node's firmware changed while its module table was read; try again");
        }
        self.frozen_digest = Some(t);
        if at == 0 {
            let search = part
                .get("p")
                .and_then(Value::as_array)
                .context("sys.up.mods: no search order `p`")?;
            self.table.search = search
                .iter()
                .map(|p| text(p, "p"))
                .collect::<anyhow::Result<_>>()?;
            self.table.mpy = part
                .get("v")
                .and_then(Value::as_int)
                .and_then(|v| u32::try_from(v).ok());
            if let Some(l) = part.get("l").and_then(Value::as_array) {
                for n in l {
                    self.table.ledger.insert(text(n, "l")?);
                }
            }
        }
        if let Some(f) = part.get("f") {
            let Value::Map(pairs) = f else {
                bail!("sys.up.mods: `f` is {}, not a map", f.type_name());
            };
            self.got_frozen = true;
            for (k, v) in pairs {
                self.table.frozen.insert(text(k, "f")?, hash_of(v, "f")?);
            }
        }
        for e in part.get("o").and_then(Value::as_array).unwrap_or_default() {
            let pair = e.as_array().unwrap_or_default();
            let [p, h] = pair else {
                bail!("sys.up.mods: an `o` entry is not [path, hash]");
            };
            self.table.files.push(NodeFile {
                path: text(p, "o")?,
                hash: hash_of(h, "o")?,
            });
        }
        self.next = match part.get("n") {
            None | Some(Value::Nil) => None,
            Some(n) => {
                let n = n
                    .as_int()
                    .and_then(|n| u64::try_from(n).ok())
                    .filter(|&n| n > at)
                    .context("sys.up.mods: `n` does not move forward")?;
                if self.parts >= MAX_PARTS {
                    bail!("sys.up.mods: more than {MAX_PARTS} parts");
                }
                Some(n)
            }
        };
        Ok(())
    }

    /// The table once every part is in.
    pub fn finish(mut self) -> anyhow::Result<NodeTable> {
        if self.next.is_some() {
            bail!("the module table is incomplete");
        }
        if !self.got_frozen {
            match self.known.take() {
                Some(k) => self.table.frozen = k,
                None => bail!("sys.up.mods sent no frozen table"),
            }
        }
        if self.frozen_digest != Some(digest(&self.table.frozen)) {
            bail!("the node's frozen table does not match its digest (damaged in transit?)");
        }
        Ok(self.table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: &[(&str, u8)]) -> HashTable {
        let mut t = HashTable::default();
        for (n, h) in entries {
            t.insert((*n).into(), [*h; HASH_LEN]);
        }
        t
    }

    fn bin(h: ModuleHash) -> Value {
        Value::Bin(h.to_vec())
    }

    #[test]
    fn parts_are_put_together_and_the_digest_checked() {
        let f = table(&[("a", 1), ("b", 2)]);
        let d = digest(&f);
        let mut asm = Assembler::new(None);
        assert_eq!(asm.request(), Some(Value::map([("o", Value::from(0u64))])));
        asm.feed(&Value::map([
            ("t", bin(d)),
            ("p", Value::Array(vec!["".into(), ".frozen".into()])),
            ("l", Value::Array(vec!["x".into()])),
            ("f", Value::map([("a", bin([1; 8]))])),
            ("o", Value::Array(vec![])),
            ("n", Value::from(1u64)),
        ]))
        .unwrap();
        assert_eq!(asm.request(), Some(Value::map([("o", Value::from(1u64))])));
        asm.feed(&Value::map([
            ("t", bin(d)),
            ("p", Value::Array(vec![])),
            ("f", Value::map([("b", bin([2; 8]))])),
            (
                "o",
                Value::Array(vec![Value::Array(vec!["x.py".into(), bin([9; 8])])]),
            ),
        ]))
        .unwrap();
        assert_eq!(asm.request(), None);
        let t = asm.finish().unwrap();
        assert_eq!(t.frozen, f);
        assert_eq!(t.search, vec!["".to_string(), FROZEN.to_string()]);
        assert_eq!(t.ledger, BTreeSet::from(["x".to_string()]));
        assert_eq!(t.files[0].module(), Some(("x", Form::Py)));
    }

    #[test]
    fn a_known_table_is_not_sent_again() {
        let f = table(&[("a", 1)]);
        let mut asm = Assembler::new(Some(f.clone()));
        let req = asm.request().unwrap();
        assert_eq!(req.get("t"), Some(&bin(digest(&f))));
        asm.feed(&Value::map([
            ("t", bin(digest(&f))),
            ("p", Value::Array(vec![".frozen".into()])),
            ("o", Value::Array(vec![])),
        ]))
        .unwrap();
        assert_eq!(asm.finish().unwrap().frozen, f);
    }

    #[test]
    fn a_table_that_does_not_match_its_digest_is_refused() {
        let mut asm = Assembler::new(None);
        asm.feed(&Value::map([
            ("t", bin([0; 8])),
            ("p", Value::Array(vec![])),
            ("f", Value::map([("a", bin([1; 8]))])),
        ]))
        .unwrap();
        assert!(asm.finish().is_err());
    }

    #[test]
    fn malformed_answers_are_errors_not_panics() {
        for bad in [
            Value::Nil,
            Value::map([("t", Value::from(1))]),
            Value::map([("t", bin([0; 8]))]),
            Value::map([
                ("t", bin([0; 8])),
                ("p", Value::Array(vec![])),
                ("n", Value::from(0)),
            ]),
            Value::map([
                ("t", bin([0; 8])),
                ("p", Value::Array(vec![])),
                ("o", Value::Array(vec![Value::from(1)])),
            ]),
        ] {
            assert!(Assembler::new(None).feed(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn mpy_version_comes_from_the_low_bits() {
        // MicroPython 1.25 on x64: 2822 = 0x0b06 → v6.3 (arch in the top bits).
        assert_eq!(mpy_version(2822), (6, 3));
    }

    #[test]
    fn file_names_give_module_and_form() {
        let f = |p: &str| NodeFile {
            path: p.into(),
            hash: [0; 8],
        };
        assert_eq!(f("lib/x.mpy").module(), Some(("x", Form::Mpy)));
        assert_eq!(f("lib/x.mpy").split(), ("lib", "x.mpy"));
        assert_eq!(f("x.py.moat-tmp").module(), None);
        assert!(f("x.py.moat-tmp").is_temp());
        assert_eq!(f(".py").module(), None);
    }
}
