//! Node keys (docs/auth.md): 32 random bytes per node, kept out of
//! `moat.toml` in the gitignored `.moat/keys/NODE` (64 hex digits and a
//! newline, mode 0600) or given as `MOAT_KEY_<NODE>` (hex) for CI.
//!
//! `moat key rotate` keeps the next key as `.moat/keys/NODE.new` until the
//! node has it and it replaced the current one, so a failure half-way
//! loses neither: a client that the node refuses with the current key
//! tries the pending one ([`Keys::candidates`]).

use anyhow::{bail, Context};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A node key.
pub type Key = [u8; 32];

/// The folder of a project's keys.
pub fn dir(root: &Path) -> PathBuf {
    root.join(".moat").join("keys")
}

/// The file of `node`'s key.
pub fn path(root: &Path, node: &str) -> PathBuf {
    dir(root).join(node)
}

/// The file of `node`'s pending key (during `moat key rotate`).
pub fn pending_path(root: &Path, node: &str) -> PathBuf {
    dir(root).join(format!("{node}.new"))
}

/// `MOAT_KEY_<NODE>`: the node name upper-cased, `-` → `_`.
pub fn env_name(node: &str) -> String {
    let up: String = node
        .chars()
        .map(|c| {
            if c == '-' {
                '_'
            } else {
                c.to_ascii_uppercase()
            }
        })
        .collect();
    format!("MOAT_KEY_{up}")
}

/// 32 bytes from 64 hex digits (surrounding whitespace ignored).
pub fn parse_hex(text: &str) -> Option<Key> {
    let bytes = hex::decode(text.trim()).ok()?;
    bytes.try_into().ok()
}

/// `node`'s key: `MOAT_KEY_<NODE>` when set, else `.moat/keys/NODE`;
/// `None` when neither exists.
pub fn load(root: &Path, node: &str) -> anyhow::Result<Option<Key>> {
    let var = env_name(node);
    if let Some(v) = std::env::var_os(&var).filter(|v| !v.is_empty()) {
        let text = v.to_string_lossy();
        return match parse_hex(&text) {
            Some(k) => Ok(Some(k)),
            None => bail!(
                "${var} is not a node key: it must be 64 hex digits (32 bytes); copy it from .moat/keys/{node}"
            ),
        };
    }
    read_file(&path(root, node))
}

/// The pending key of `node` (`.moat/keys/NODE.new`), if a rotation is
/// under way.
pub fn load_pending(root: &Path, node: &str) -> anyhow::Result<Option<Key>> {
    read_file(&pending_path(root, node))
}

fn read_file(file: &Path) -> anyhow::Result<Option<Key>> {
    match std::fs::read_to_string(file) {
        Ok(text) => match parse_hex(&text) {
            Some(k) => Ok(Some(k)),
            None => bail!(
                "{} is not a node key (64 hex digits): restore it from a backup, or delete it and run `moat build` and `moat flash` to give the node a new one",
                file.display()
            ),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", file.display())),
    }
}

/// 32 random bytes from the kernel.
pub fn random() -> anyhow::Result<Key> {
    let mut key = [0u8; 32];
    random_fill(&mut key)?;
    Ok(key)
}

/// Fills `buf` from `/dev/urandom` (the host is Linux).
pub fn random_fill(buf: &mut [u8]) -> anyhow::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .context("reading random bytes from /dev/urandom")
}

/// Writes `key` to `file` (mode 0600, in a 0700 folder), atomically: a
/// temporary file renamed into place.
pub fn write(file: &Path, key: &Key) -> anyhow::Result<()> {
    let folder = file.parent().context("a key file has a folder")?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(folder)
        .with_context(|| format!("cannot create {}", folder.display()))?;
    let tmp = file.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(format!("{}\n", hex::encode(key)).as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    // A umask cannot widen it, but a pre-existing file could have been.
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&tmp, file).with_context(|| format!("cannot write {}", file.display()))?;
    Ok(())
}

/// `node`'s key, made (and saved) when it has none. `Ok((key, true))`
/// when it was made now.
pub fn ensure(root: &Path, node: &str) -> anyhow::Result<(Key, bool)> {
    if let Some(k) = load(root, node)? {
        return Ok((k, false));
    }
    let key = random()?;
    write(&path(root, node), &key)?;
    Ok((key, true))
}

/// The keys a client tries, in order: the current one, then a pending one
/// (a rotation that wrote the node but not yet the local file).
pub fn candidates(root: &Path, node: &str) -> anyhow::Result<Vec<Key>> {
    let mut out = Vec::new();
    out.extend(load(root, node)?);
    if let Some(p) = load_pending(root, node)? {
        if !out.contains(&p) {
            out.push(p);
        }
    }
    Ok(out)
}

/// A random project id: 16 hex digits.
pub fn new_project_id() -> anyhow::Result<String> {
    let mut b = [0u8; crate::manifest::PROJECT_ID_LEN / 2];
    random_fill(&mut b)?;
    Ok(hex::encode(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_name_upper_cases_and_maps_dashes() {
        assert_eq!(env_name("my-pump2"), "MOAT_KEY_MY_PUMP2");
    }

    #[test]
    fn keys_are_written_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let node = "key-test-node-unlikely-in-env";
        let (k, made) = ensure(dir.path(), node).unwrap();
        assert!(made);
        let meta = std::fs::metadata(path(dir.path(), node)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let kd = std::fs::metadata(super::dir(dir.path())).unwrap();
        assert_eq!(kd.permissions().mode() & 0o777, 0o700);
        assert_eq!(ensure(dir.path(), node).unwrap(), (k, false));
        let text = std::fs::read_to_string(path(dir.path(), node)).unwrap();
        assert_eq!(text.len(), 65, "{text:?}");
    }

    #[test]
    fn a_pending_key_is_tried_after_the_current_one() {
        let dir = tempfile::tempdir().unwrap();
        let node = "key-test-pending-unlikely-in-env";
        let (k, _) = ensure(dir.path(), node).unwrap();
        let next = random().unwrap();
        write(&pending_path(dir.path(), node), &next).unwrap();
        assert_eq!(candidates(dir.path(), node).unwrap(), vec![k, next]);
    }

    #[test]
    fn a_damaged_key_file_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = path(dir.path(), "bad");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, "abc\n").unwrap();
        let e = load(dir.path(), "bad").unwrap_err().to_string();
        assert!(e.contains(".moat/keys/bad") && e.contains("64 hex"), "{e}");
    }

    #[test]
    fn project_ids_are_16_hex_digits_and_differ() {
        let a = new_project_id().unwrap();
        assert_eq!(a.len(), 16);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, new_project_id().unwrap());
    }
}
