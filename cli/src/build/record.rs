//! The build record (`.moat/build/<target>/record.json`): what went into a
//! firmware and what came out. Equal inputs and intact artefacts mean the
//! compiler need not run.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;

/// Bumped when the record's meaning changes (old records then rebuild).
pub const FORMAT: u32 = 2;

/// Everything that determines the firmware.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inputs {
    /// The moat version (its embedded runtime and templates are covered by
    /// the hashes below; this catches changes in how moat drives make).
    pub moat: String,
    /// The MicroPython tree's id (`debian:micropython=1.25.0`, …).
    pub source: String,
    /// The board's name and the SHA-256 of its definition.
    pub board: String,
    pub board_sha256: String,
    /// The build command's arguments (make variables and their values).
    pub build_args: Vec<String>,
    /// Toolchain folders from the settings (`bin=…`, `sdk=…`), which reach
    /// the build through its environment.
    #[serde(default)]
    pub toolchain: Vec<String>,
    /// SHA-256 of the rendered frozen manifest and `_hash` module.
    pub manifest_sha256: String,
    pub hash_module_sha256: String,
    /// Every frozen module's hash (16 hex chars).
    pub modules: BTreeMap<String, String>,
    /// SHA-256 over the native module's sources (`node-runtime/native`).
    #[serde(default)]
    pub native_sha256: String,
}

/// One firmware file as built.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artefact {
    /// Relative to the target's build folder (`firmware/micropython`).
    pub path: String,
    pub sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub format: u32,
    pub target: String,
    pub inputs: Inputs,
    /// The firmware files; the first is the main image.
    pub firmware: Vec<Artefact>,
    /// Progress lines the compile printed (the next build's bar length).
    pub compile_steps: u64,
}

impl Record {
    /// Reads a record; `None` when absent, unreadable or of another format
    /// (all of which just mean "rebuild").
    pub fn load(path: &Path) -> Option<Record> {
        let text = std::fs::read_to_string(path).ok()?;
        let r: Record = serde_json::from_str(&text).ok()?;
        (r.format == FORMAT).then_some(r)
    }

    /// Writes atomically (temp file + rename).
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_string_pretty(self)? + "\n")?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }

    /// Whether this record's firmware still stands for `inputs`: same
    /// inputs, and every artefact present under `dir` with its recorded
    /// hash.
    pub fn is_current(&self, inputs: &Inputs, dir: &Path) -> bool {
        self.inputs == *inputs
            && !self.firmware.is_empty()
            && self
                .firmware
                .iter()
                .all(|a| file_sha256(&dir.join(&a.path)).is_some_and(|h| h == a.sha256))
    }
}

/// Hex SHA-256 of a file's content; `None` if unreadable.
pub fn file_sha256(path: &Path) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    Some(sha256_hex(&bytes))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> Inputs {
        Inputs {
            toolchain: vec![],
            moat: "0".into(),
            source: "s".into(),
            board: "unix".into(),
            board_sha256: "b".into(),
            build_args: vec!["A=1".into()],
            manifest_sha256: "m".into(),
            hash_module_sha256: "h".into(),
            modules: BTreeMap::from([("main".into(), "00".repeat(8))]),
            native_sha256: "n".into(),
        }
    }

    #[test]
    fn record_is_current_only_with_equal_inputs_and_intact_firmware() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("firmware")).unwrap();
        std::fs::write(dir.path().join("firmware/fw"), b"image").unwrap();
        let r = Record {
            format: FORMAT,
            target: "n".into(),
            inputs: inputs(),
            firmware: vec![Artefact {
                path: "firmware/fw".into(),
                sha256: sha256_hex(b"image"),
                offset: None,
            }],
            compile_steps: 3,
        };
        r.save(&dir.path().join("record.json")).unwrap();
        let r = Record::load(&dir.path().join("record.json")).unwrap();
        assert!(r.is_current(&inputs(), dir.path()));

        let mut changed = inputs();
        changed.modules.insert("main".into(), "11".repeat(8));
        assert!(!r.is_current(&changed, dir.path()));

        std::fs::write(dir.path().join("firmware/fw"), b"tampered").unwrap();
        assert!(!r.is_current(&inputs(), dir.path()));
    }
}
