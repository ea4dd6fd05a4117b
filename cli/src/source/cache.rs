//! The user's cache directory: locked, atomically installed entries.
//!
//! An entry is a directory that appears in one `rename` once complete (with
//! a marker file inside), so a crash or a parallel run never sees half of
//! one. A lock file next to it serialises the work of creating it.

use anyhow::Context;
use std::fs::File;
use std::path::{Path, PathBuf};

/// Name of the marker written into an entry once it is complete.
pub const MARKER: &str = ".moat-complete";

/// moat's cache root: `$XDG_CACHE_HOME/moat`, else `~/.cache/moat`.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Cache { root: root.into() }
    }

    pub fn from_env() -> anyhow::Result<Self> {
        if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
            return Ok(Cache::at(PathBuf::from(x).join("moat")));
        }
        let home = std::env::var_os("HOME").filter(|h| !h.is_empty()).context(
            "neither XDG_CACHE_HOME nor HOME is set: cannot place moat's cache; set XDG_CACHE_HOME",
        )?;
        Ok(Cache::at(PathBuf::from(home).join(".cache").join("moat")))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A sub-directory of the cache, created if needed.
    pub fn dir(&self, name: &str) -> anyhow::Result<PathBuf> {
        let d = self.root.join(name);
        std::fs::create_dir_all(&d)
            .with_context(|| format!("cannot create cache directory {}", d.display()))?;
        Ok(d)
    }
}

/// An exclusive lock held until dropped (the OS releases it on exit too).
pub struct Lock {
    _file: File,
}

/// Takes the exclusive lock `path`, waiting for other moat processes.
pub fn lock(path: &Path) -> anyhow::Result<Lock> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open lock file {}", path.display()))?;
    file.lock()
        .with_context(|| format!("cannot lock {}", path.display()))?;
    Ok(Lock { _file: file })
}

/// Whether `dir` is a complete entry.
pub fn is_complete(dir: &Path) -> bool {
    dir.join(MARKER).is_file()
}

/// Creates the entry `dest` atomically: `fill` gets a fresh scratch
/// directory in the same parent and returns the directory (inside it) that
/// becomes the entry; the marker (holding `marker_text`) is written, then one
/// rename publishes it. Call with the entry's lock held.
pub fn install(
    dest: &Path,
    marker_text: &str,
    fill: impl FnOnce(&Path) -> anyhow::Result<PathBuf>,
) -> anyhow::Result<()> {
    let parent = dest.parent().context("cache entry has no parent")?;
    std::fs::create_dir_all(parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    if dest.exists() {
        // Left over from an interrupted run that never wrote its marker.
        std::fs::remove_dir_all(dest)
            .with_context(|| format!("cannot remove incomplete {}", dest.display()))?;
    }
    // Scratch folders of this entry left by a killed run (we hold the
    // entry's lock, so none is in use).
    // `@` ends the name: no entry name contains it.
    let prefix = format!(
        ".tmp-{}@",
        dest.file_name()
            .map_or("entry".into(), |n| n.to_string_lossy())
    );
    for e in std::fs::read_dir(parent)?.flatten() {
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    let scratch = tempfile::Builder::new()
        .prefix(&prefix)
        .tempdir_in(parent)
        .with_context(|| format!("cannot create a scratch directory in {}", parent.display()))?;
    let tree = fill(scratch.path())?;
    std::fs::write(tree.join(MARKER), marker_text)?;
    std::fs::rename(&tree, dest)
        .with_context(|| format!("cannot move {} to {}", tree.display(), dest.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_fill_leaves_no_entry() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("e");
        let r = install(&dest, "x", |_| anyhow::bail!("boom"));
        assert!(r.is_err());
        assert!(!dest.exists());
        // The scratch directory is cleaned up as well.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn scratch_left_by_a_killed_run_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let stale = dir.path().join(".tmp-e@abc");
        std::fs::create_dir(&stale).unwrap();
        let other = dir.path().join(".tmp-e-2@abc");
        std::fs::create_dir(&other).unwrap();
        install(&dir.path().join("e"), "id", |s| {
            let t = s.join("t");
            std::fs::create_dir(&t)?;
            Ok(t)
        })
        .unwrap();
        assert!(!stale.exists());
        assert!(
            other.exists(),
            "another entry's scratch is not ours to remove"
        );
    }

    #[test]
    fn installed_entry_is_complete() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("e");
        install(&dest, "id", |s| {
            let t = s.join("tree");
            std::fs::create_dir(&t)?;
            std::fs::write(t.join("f"), "1")?;
            Ok(t)
        })
        .unwrap();
        assert!(is_complete(&dest));
        assert_eq!(std::fs::read_to_string(dest.join("f")).unwrap(), "1");
    }
}
