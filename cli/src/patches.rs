//! The project's own MicroPython patches (`micropython-patches/<board>/`),
//! compiled into the binary and applied by `moat build`.
//!
//! A board with patches builds from a patched copy of the cached tree: the
//! pristine tree is copied and each unified diff applied in name order with
//! `patch -p1`. The copy is a cache entry keyed by the source tree and the
//! patches' content, created atomically under a lock, so applying is
//! idempotent: the same inputs give the same tree, made once. The pristine
//! tree is never touched.

use crate::board::Board;
use crate::source::{cache, Cache, Notes, SourceTree};
use crate::tools::{self, run_logged, Tool};
use anyhow::Context;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

/// One patch: its file name and its unified diff.
pub type Patch = (&'static str, &'static str);

/// The patch sets by board name, each in application order.
static SETS: &[(&str, &[Patch])] = &[(
    "qemu-mps2",
    &[(
        "0001-mps2-satellite.patch",
        include_str!("../../micropython-patches/qemu-mps2/0001-mps2-satellite.patch"),
    )],
)];

pub const PATCH: Tool = Tool {
    program: "patch",
    package: "patch",
    purpose: "apply moat's MicroPython patches",
};

pub const CP: Tool = Tool {
    program: "cp",
    package: "coreutils",
    purpose: "copy the MicroPython tree before patching it",
};

/// The patches for `board` (empty when it has none).
pub fn for_board(board: &str) -> &'static [Patch] {
    SETS.iter()
        .find(|(b, _)| *b == board)
        .map_or(&[], |(_, p)| *p)
}

/// Identifies a patch set's content (names and diffs).
pub fn digest(patches: &[Patch]) -> String {
    let mut h = Sha256::new();
    for (name, diff) in patches {
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update((diff.len() as u64).to_le_bytes());
        h.update(diff.as_bytes());
    }
    hex::encode(&h.finalize()[..6])
}

/// The tree `board` builds from: `tree` itself when the board has no
/// patches and needs no extra sources, else its prepared copy (made on
/// first use). The rp2 port gets the Pico SDK, TinyUSB and mbedTLS copied
/// into the `lib/` folders the Debian tarball leaves empty.
pub fn tree_for_board(
    tree: &SourceTree,
    board: &Board,
    cache: &Cache,
    notes: Notes,
) -> anyhow::Result<SourceTree> {
    let fill = if board.port == "rp2" {
        crate::source::rp2::provide(cache, notes)?.tree_dirs()
    } else {
        vec![]
    };
    prepare(
        tree,
        &board.name,
        for_board(&board.name),
        &fill,
        cache,
        notes,
    )
}

/// `tree` with `patches` applied, as a cache entry (see the module doc).
pub fn apply(
    tree: &SourceTree,
    set: &str,
    patches: &[Patch],
    cache: &Cache,
    notes: Notes,
) -> anyhow::Result<SourceTree> {
    prepare(tree, set, patches, &[], cache, notes)
}

/// `tree` with the empty folders `fill` names filled with copies of their
/// sources, then `patches` applied.
fn prepare(
    tree: &SourceTree,
    set: &str,
    patches: &[Patch],
    fill: &[(&str, PathBuf)],
    cache: &Cache,
    notes: Notes,
) -> anyhow::Result<SourceTree> {
    if patches.is_empty() && fill.is_empty() {
        return Ok(tree.clone());
    }
    let digest = digest(patches);
    let mut id = format!("{}+patches:{set}:{digest}", tree.id);
    for (dir, from) in fill {
        id.push_str(&format!("+{dir}={}", from.display()));
    }
    let key = hex::encode(&Sha256::digest(id.as_bytes())[..6]);
    let base = cache.dir("micropython-patched")?;
    let dest = base.join(format!("{}-{key}", safe_name(set)));
    if !cache::is_complete(&dest) {
        let _lock = cache::lock(&base.join(format!("{}-{key}.lock", safe_name(set))))?;
        if !cache::is_complete(&dest) {
            tools::require(&[CP, PATCH])?;
            cache::install(&dest, &id, |scratch| {
                notes(&format!(
                    "preparing the MicroPython tree for {set} ({} moat patch(es))",
                    patches.len()
                ));
                let copy = scratch.join("tree");
                let mut cp = Command::new("cp");
                cp.arg("-a").arg(&tree.root).arg(&copy);
                run_logged(cp, &scratch.join("cp.log"), |_| {})
                    .with_context(|| format!("cannot copy {}", tree.root.display()))?;
                let _ = std::fs::remove_file(copy.join(cache::MARKER));
                for (dir, from) in fill {
                    let to = copy.join(dir);
                    let empty = std::fs::read_dir(&to).map_or(true, |mut d| d.next().is_none());
                    if !empty {
                        continue;
                    }
                    notes(&format!("adding {} as {dir}", from.display()));
                    let _ = std::fs::remove_dir(&to);
                    let mut cp = Command::new("cp");
                    cp.arg("-a").arg(from).arg(&to);
                    run_logged(cp, &scratch.join("cp.log"), |_| {})
                        .with_context(|| format!("cannot copy {} into the tree", from.display()))?;
                }
                for (name, diff) in patches {
                    apply_one(&copy, scratch, name, diff).with_context(|| {
                        format!(
                            "moat's patch {set}/{name} does not apply to {} ({}); it is made for MicroPython {}",
                            tree.root.display(),
                            tree.id,
                            crate::source::DEFAULT_VERSION
                        )
                    })?;
                }
                Ok(copy)
            })?;
        }
    }
    Ok(SourceTree {
        mpy_cross: dest.join(
            tree.mpy_cross
                .strip_prefix(&tree.root)
                .unwrap_or(Path::new("mpy-cross/build/mpy-cross")),
        ),
        root: dest,
        id,
        components: tree.components.clone(),
    })
}

fn apply_one(root: &Path, scratch: &Path, name: &str, diff: &str) -> anyhow::Result<()> {
    let file: PathBuf = scratch.join(safe_name(name));
    std::fs::write(&file, diff)?;
    let mut p = Command::new("patch");
    p.args([
        "-p1",
        "--batch",
        "--forward",
        "--no-backup-if-mismatch",
        "--fuzz=0",
        "-d",
    ])
    .arg(root)
    .arg("-i")
    .arg(&file);
    run_logged(p, &scratch.join(format!("{}.log", safe_name(name))), |_| {})?;
    Ok(())
}

fn safe_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    const ADD_LINE: &str = "--- a/py/x.c\n+++ b/py/x.c\n@@ -1,2 +1,3 @@\n one\n+patched\n two\n";
    const NEW_FILE: &str =
        "--- /dev/null\n+++ b/ports/q/modules/_boot.py\n@@ -0,0 +1 @@\n+print('boot')\n";

    fn fake_tree(dir: &Path) -> SourceTree {
        let root = dir.join("pristine");
        std::fs::create_dir_all(root.join("py")).unwrap();
        std::fs::create_dir_all(root.join("mpy-cross/build")).unwrap();
        std::fs::write(root.join("py/x.c"), "one\ntwo\n").unwrap();
        std::fs::write(root.join("mpy-cross/build/mpy-cross"), "bin").unwrap();
        SourceTree {
            mpy_cross: root.join("mpy-cross/build/mpy-cross"),
            root,
            id: "path:/fake".into(),
            components: BTreeMap::new(),
        }
    }

    #[test]
    fn patched_copy_has_the_changes_and_the_pristine_tree_none() {
        let dir = tempfile::tempdir().unwrap();
        let tree = fake_tree(dir.path());
        let cache = Cache::at(dir.path().join("cache"));
        let set = [("1.patch", ADD_LINE), ("2.patch", NEW_FILE)];
        std::fs::create_dir_all(tree.root.join("lib/sdk")).unwrap();
        let sdk = dir.path().join("sdk");
        std::fs::create_dir_all(&sdk).unwrap();
        std::fs::write(sdk.join("README.md"), "sdk").unwrap();
        let fill = [("lib/sdk", sdk)];
        let out = prepare(&tree, "b", &set, &fill, &cache, &mut |_| {}).unwrap();
        assert!(out.root.join("lib/sdk/README.md").is_file());
        assert!(!tree.root.join("lib/sdk/README.md").exists());
        assert_ne!(out.root, tree.root);
        let x = std::fs::read_to_string(out.root.join("py/x.c")).unwrap();
        assert_eq!(x, "one\npatched\ntwo\n");
        assert!(out.root.join("ports/q/modules/_boot.py").is_file());
        assert!(out.mpy_cross.is_file());
        assert!(out.id.starts_with("path:/fake+patches:b:"), "{}", out.id);
        let pristine = std::fs::read_to_string(tree.root.join("py/x.c")).unwrap();
        assert_eq!(pristine, "one\ntwo\n");
    }

    #[test]
    fn applying_again_reuses_the_patched_tree() {
        let dir = tempfile::tempdir().unwrap();
        let tree = fake_tree(dir.path());
        let cache = Cache::at(dir.path().join("cache"));
        let set = [("1.patch", ADD_LINE)];
        let first = apply(&tree, "b", &set, &cache, &mut |_| {}).unwrap();
        std::fs::write(first.root.join("sentinel"), "").unwrap();
        let mut notes = vec![];
        let again = apply(&tree, "b", &set, &cache, &mut |n| notes.push(n.to_owned())).unwrap();
        assert_eq!(again.root, first.root);
        assert!(
            again.root.join("sentinel").is_file(),
            "the tree was made anew"
        );
        assert!(notes.is_empty(), "{notes:?}");
        // Still patched once, not twice.
        let x = std::fs::read_to_string(again.root.join("py/x.c")).unwrap();
        assert_eq!(x.matches("patched").count(), 1);
    }

    #[test]
    fn changed_patches_give_another_tree() {
        let dir = tempfile::tempdir().unwrap();
        let tree = fake_tree(dir.path());
        let cache = Cache::at(dir.path().join("cache"));
        let a = apply(&tree, "b", &[("1.patch", ADD_LINE)], &cache, &mut |_| {}).unwrap();
        let b = apply(&tree, "b", &[("1.patch", NEW_FILE)], &cache, &mut |_| {}).unwrap();
        assert_ne!(a.root, b.root);
        assert_ne!(a.id, b.id);
    }

    #[test]
    fn a_patch_that_does_not_apply_is_named_and_leaves_no_tree() {
        let dir = tempfile::tempdir().unwrap();
        let tree = fake_tree(dir.path());
        let cache = Cache::at(dir.path().join("cache"));
        let bad = "--- a/py/x.c\n+++ b/py/x.c\n@@ -1,2 +1,3 @@\n nothing\n+x\n like this\n";
        let err = apply(&tree, "b", &[("0007-bad.patch", bad)], &cache, &mut |_| {}).unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("b/0007-bad.patch"), "{text}");
        assert!(text.contains("does not apply"), "{text}");
        let entries: Vec<_> = std::fs::read_dir(cache.root().join("micropython-patched"))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .collect();
        assert!(entries.is_empty(), "{entries:?}");
    }

    #[test]
    fn boards_without_patches_build_from_the_cached_tree() {
        let dir = tempfile::tempdir().unwrap();
        let tree = fake_tree(dir.path());
        let cache = Cache::at(dir.path().join("cache"));
        let out = apply(&tree, "unix", for_board("unix"), &cache, &mut |_| {}).unwrap();
        assert_eq!(out.root, tree.root);
        assert_eq!(out.id, tree.id);
    }

    #[test]
    fn the_qemu_patch_set_is_embedded() {
        let set = for_board("qemu-mps2");
        assert!(!set.is_empty());
        assert!(set.iter().all(|(_, d)| d.contains("+++ b/ports/qemu/")));
    }
}
