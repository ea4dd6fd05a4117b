//! The MicroPython source provider: turns `[micropython]` from moat.toml
//! into a tree on disk with `mpy-cross` built.
//!
//! - `version`: Debian's source package, fetched once into
//!   `$XDG_CACHE_HOME/moat/micropython/<version>` (see [`debian`]);
//! - `path`: a local tree, used in place;
//! - `git` + `rev`: cloned with the system git into the cache, keyed by rev.
//!
//! Cached trees are created atomically under a lock ([`cache`]) and are
//! read-only afterwards: ports build into a `BUILD=` folder of the project.
//! Ports that need more than the MicroPython tree (pico-sdk, tinyusb, …)
//! name extra [`Component`]s, provided into the cache the same way.

pub mod cache;
pub mod debian;
pub mod rp2;

use crate::tools::{self, run_logged};
use anyhow::{bail, Context};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

pub use cache::Cache;

/// The MicroPython version used when moat.toml names none.
pub const DEFAULT_VERSION: &str = "1.25.0";

/// Where the MicroPython tree comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    Version(String),
    Path(PathBuf),
    Git { url: String, rev: String },
}

impl Default for SourceSpec {
    fn default() -> Self {
        SourceSpec::Version(DEFAULT_VERSION.into())
    }
}

/// An extra source a port needs beside the MicroPython tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Component {
    /// A Debian binary package unpacked with `dpkg -x` (e.g.
    /// `pico-sdk-source`); `subdir` is the folder inside it that is provided.
    DebianBinary { package: String, subdir: String },
    /// A Debian source package's upstream (`.orig`) tarball, unpacked; the
    /// newest version the suite offers.
    DebianSource { package: String },
}

impl Component {
    fn key(&self) -> String {
        match self {
            Component::DebianBinary { package, .. } => package.clone(),
            Component::DebianSource { package } => format!("{package}-source-package"),
        }
    }
}

/// A MicroPython tree ready for port builds.
#[derive(Debug, Clone)]
pub struct SourceTree {
    /// The tree's top (holds `py/`, `ports/`, `mpy-cross/`).
    pub root: PathBuf,
    /// Identifies the tree's content in build records, e.g.
    /// `debian:micropython=1.25.0`, `git:URL@REV`, `path:/abs`.
    pub id: String,
    /// The built cross-compiler.
    pub mpy_cross: PathBuf,
    /// Extra components by key, e.g. `pico-sdk-source` → its folder.
    pub components: BTreeMap<String, PathBuf>,
}

impl SourceTree {
    /// Sets the environment a port build of this tree needs to be
    /// reproducible: `SOURCE_DATE_EPOCH` ([`SourceTree::date_epoch`]) and
    /// git confined to the tree, so MicroPython's version header never
    /// describes an unrelated repository the cache happens to sit in (a
    /// dotfiles repo in `$HOME`, a project's `target/`).
    pub fn apply_build_env(&self, cmd: &mut Command) {
        cmd.env("SOURCE_DATE_EPOCH", self.date_epoch().to_string());
        if let Some(parent) = self.root.parent() {
            cmd.env("GIT_CEILING_DIRECTORIES", parent);
        }
        for var in ["GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"] {
            cmd.env_remove(var);
        }
    }

    /// The tree's own timestamp (seconds since 1970): the commit time of a
    /// git checkout, else the release's file time. Builds use it as
    /// `SOURCE_DATE_EPOCH`, so the firmware's build date is reproducible.
    pub fn date_epoch(&self) -> u64 {
        if self.root.join(".git").exists() {
            let mut git = Command::new("git");
            git.arg("-C")
                .arg(&self.root)
                .args(["log", "-1", "--format=%ct"]);
            if let Some(t) = tools::run_capture(&mut git)
                .ok()
                .and_then(|o| o.trim().parse().ok())
            {
                return t;
            }
        }
        std::fs::metadata(self.root.join("py/mpconfig.h"))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs())
    }
}

/// Progress notes (one line each) while fetching or building.
pub type Notes<'a> = &'a mut dyn FnMut(&str);

/// Provides the tree for `spec` (fetching and building `mpy-cross` only when
/// the cache lacks it) plus the given extra components.
pub fn provide(
    spec: &SourceSpec,
    components: &[Component],
    cache: &Cache,
    notes: Notes,
) -> anyhow::Result<SourceTree> {
    let mut tree = match spec {
        SourceSpec::Version(v) => provide_debian(v, cache, notes)?,
        SourceSpec::Path(p) => provide_path(p, cache, notes)?,
        SourceSpec::Git { url, rev } => provide_git(url, rev, cache, notes)?,
    };
    for c in components {
        tree.components
            .insert(c.key(), provide_component(c, cache, notes)?);
    }
    Ok(tree)
}

fn mpy_cross_path(root: &Path) -> PathBuf {
    root.join("mpy-cross/build/mpy-cross")
}

/// Whether `version` is safe as a single path component.
fn check_version(version: &str) -> anyhow::Result<()> {
    let ok = !version.is_empty()
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+' | '~'))
        && !version.starts_with('.');
    if !ok {
        bail!("invalid MicroPython version {version:?}: expected something like \"{DEFAULT_VERSION}\"");
    }
    Ok(())
}

fn provide_debian(version: &str, cache: &Cache, notes: Notes) -> anyhow::Result<SourceTree> {
    check_version(version)?;
    let base = cache.dir("micropython")?;
    let dest = base.join(version);
    let id = format!("debian:micropython={version}");
    if !cache::is_complete(&dest) {
        let _lock = cache::lock(&base.join(format!("{version}.lock")))?;
        if !cache::is_complete(&dest) {
            tools::require(&[
                tools::APT_GET,
                tools::TAR,
                tools::XZ,
                tools::MAKE,
                tools::GCC,
            ])?;
            let apt_dir = cache.dir("apt")?;
            let _apt_lock = cache::lock(&cache.root().join("apt.lock"))?;
            cache::install(&dest, &id, |scratch| {
                notes(&format!(
                    "fetching MicroPython {version} source (Debian {})",
                    debian::SUITE
                ));
                let dl = scratch.join("download");
                std::fs::create_dir(&dl)?;
                let tarball = debian::fetch_micropython(&apt_dir, version, &dl)?;
                notes("unpacking MicroPython source");
                let tree = unpack_tarball(&tarball, &scratch.join("unpacked"))?;
                build_mpy_cross(&tree, notes)?;
                Ok(tree)
            })?;
        }
    }
    Ok(SourceTree {
        mpy_cross: mpy_cross_path(&dest),
        root: dest,
        id,
        components: BTreeMap::new(),
    })
}

fn provide_path(path: &Path, cache: &Cache, notes: Notes) -> anyhow::Result<SourceTree> {
    let root = path
        .canonicalize()
        .with_context(|| format!("[micropython] path {} does not exist", path.display()))?;
    if !root.join("py").is_dir() || !root.join("mpy-cross").is_dir() {
        bail!(
            "[micropython] path {} is not a MicroPython tree (no py/ and mpy-cross/ inside)",
            root.display()
        );
    }
    let mpy_cross = mpy_cross_path(&root);
    if !mpy_cross.is_file() {
        let locks = cache.dir("locks")?;
        let _lock =
            cache::lock(&locks.join(format!("path-{}.lock", short_hash(&root.to_string_lossy()))))?;
        if !mpy_cross.is_file() {
            build_mpy_cross(&root, notes)?;
        }
    }
    Ok(SourceTree {
        id: format!("path:{}", root.display()),
        mpy_cross,
        root,
        components: BTreeMap::new(),
    })
}

/// A fingerprint of a local tree's files (path, size, modification time;
/// build folders and `.git` left out): a `path` source is edited in place,
/// so its id alone cannot tell the build record that it changed. Like
/// cargo's path dependencies; make then rebuilds only what changed.
pub fn path_stamp(root: &Path) -> String {
    fn walk(dir: &Path, root: &Path, h: &mut sha2::Sha256) {
        use sha2::Digest;
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let mut entries: Vec<_> = entries.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name();
            let name = name.to_string_lossy();
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() {
                if name == ".git" || name.starts_with("build") {
                    continue;
                }
                walk(&e.path(), root, h);
            } else {
                let rel = e.path();
                let rel = rel.strip_prefix(root).unwrap_or(&rel);
                let mtime = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_nanos());
                h.update(format!("{}\0{}\0{mtime}\n", rel.display(), meta.len()).as_bytes());
            }
        }
    }
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    walk(root, root, &mut h);
    hex::encode(&h.finalize()[..8])
}

fn provide_git(url: &str, rev: &str, cache: &Cache, notes: Notes) -> anyhow::Result<SourceTree> {
    if rev.is_empty() || rev.starts_with('-') {
        bail!("[micropython] rev {rev:?} is not a git revision (a tag, branch or commit)");
    }
    let base = cache.dir("micropython")?;
    let key = format!("git-{}", short_hash(&format!("{url}@{rev}")));
    let dest = base.join(&key);
    let id = format!("git:{url}@{rev}");
    if !cache::is_complete(&dest) {
        let _lock = cache::lock(&base.join(format!("{key}.lock")))?;
        if !cache::is_complete(&dest) {
            tools::require(&[tools::GIT, tools::MAKE, tools::GCC])?;
            cache::install(&dest, &id, |scratch| {
                notes(&format!("cloning {url} at {rev}"));
                let tree = scratch.join("tree");
                let log = scratch.join("git.log");
                let mut clone = Command::new("git");
                clone
                    .args(["clone", "--quiet", "--no-checkout", "--", url])
                    .arg(&tree);
                run_logged(clone, &log, |_| {})?;
                let mut co = Command::new("git");
                co.arg("-C")
                    .arg(&tree)
                    .args(["checkout", "--quiet", "--detach", rev, "--"]);
                run_logged(co, &log, |_| {})
                    .with_context(|| format!("revision {rev} not found in {url}"))?;
                build_mpy_cross(&tree, notes)?;
                Ok(tree)
            })?;
        }
    }
    Ok(SourceTree {
        mpy_cross: mpy_cross_path(&dest),
        root: dest,
        id,
        components: BTreeMap::new(),
    })
}

/// Provides one extra component into the cache (once) and returns its folder.
pub fn provide_component(c: &Component, cache: &Cache, notes: Notes) -> anyhow::Result<PathBuf> {
    match c {
        Component::DebianSource { package } => {
            let base = cache.dir("components")?;
            let key = c.key();
            let dest = base.join(&key);
            if !cache::is_complete(&dest) {
                let _lock = cache::lock(&base.join(format!("{key}.lock")))?;
                if !cache::is_complete(&dest) {
                    tools::require(&[tools::APT_GET, tools::TAR, tools::XZ])?;
                    let apt_dir = cache.dir("apt")?;
                    let _apt_lock = cache::lock(&cache.root().join("apt.lock"))?;
                    cache::install(&dest, &key, |scratch| {
                        notes(&format!(
                            "fetching the {package} source (Debian {})",
                            debian::SUITE
                        ));
                        let apt = debian::Apt::prepare(&apt_dir)?;
                        let versions = apt.source_versions(package)?;
                        let Some(version) = versions.first() else {
                            bail!("Debian {} has no source package {package}", debian::SUITE);
                        };
                        let dl = scratch.join("download");
                        std::fs::create_dir(&dl)?;
                        let tarball = apt.download_source_tarball(package, version, &dl)?;
                        let into = scratch.join("unpacked");
                        std::fs::create_dir_all(&into)?;
                        let mut tar = Command::new("tar");
                        tar.arg("-xf").arg(&tarball).arg("-C").arg(&into);
                        tools::run_capture(&mut tar)
                            .with_context(|| format!("cannot unpack the {package} source"))?;
                        let tops: Vec<PathBuf> = std::fs::read_dir(&into)?
                            .filter_map(|e| e.ok().map(|e| e.path()))
                            .filter(|p| p.is_dir())
                            .collect();
                        match tops.as_slice() {
                            [top] => Ok(top.clone()),
                            _ => bail!("{} does not hold one folder", tarball.display()),
                        }
                    })?;
                }
            }
            Ok(dest)
        }
        Component::DebianBinary { package, subdir } => {
            let base = cache.dir("components")?;
            let dest = base.join(package);
            if !cache::is_complete(&dest) {
                let _lock = cache::lock(&base.join(format!("{package}.lock")))?;
                if !cache::is_complete(&dest) {
                    tools::require(&[tools::APT_GET, tools::DPKG])?;
                    let apt_dir = cache.dir("apt")?;
                    let _apt_lock = cache::lock(&cache.root().join("apt.lock"))?;
                    cache::install(&dest, package, |scratch| {
                        notes(&format!("fetching {package} (Debian {})", debian::SUITE));
                        let apt = debian::Apt::prepare(&apt_dir)?;
                        let deb = apt.download_binary(package, scratch)?;
                        let tree = scratch.join("tree");
                        let mut x = Command::new("dpkg");
                        x.arg("-x").arg(&deb).arg(&tree);
                        run_logged(x, &scratch.join("dpkg.log"), |_| {})?;
                        Ok(tree)
                    })?;
                }
            }
            let dir = dest.join(subdir);
            if !dir.is_dir() {
                bail!("package {package} has no folder {subdir}");
            }
            Ok(dir)
        }
    }
}

/// Unpacks `tarball` into `into` and returns its single top folder.
fn unpack_tarball(tarball: &Path, into: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(into)?;
    let mut tar = Command::new("tar");
    tar.arg("-xf").arg(tarball).arg("-C").arg(into);
    tools::run_capture(&mut tar).context("cannot unpack the MicroPython source")?;
    let tops: Vec<PathBuf> = std::fs::read_dir(into)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    match tops.as_slice() {
        [top] if top.join("py").is_dir() => Ok(top.clone()),
        _ => bail!("{} does not hold one MicroPython tree", tarball.display()),
    }
}

/// Builds `mpy-cross` on its own (port variables must not leak into it).
fn build_mpy_cross(root: &Path, notes: Notes) -> anyhow::Result<()> {
    tools::require(&[tools::MAKE, tools::GCC, tools::PYTHON3])?;
    notes("building mpy-cross");
    let mut make = Command::new("make");
    make.arg("-C")
        .arg(root.join("mpy-cross"))
        .arg(format!("-j{}", jobs()));
    // A clean environment for make: no inherited MAKEFLAGS from a parent
    // make, and git confined to the tree (see `apply_build_env`).
    make.env_remove("MAKEFLAGS").env_remove("MFLAGS");
    if let Some(parent) = root.parent() {
        make.env("GIT_CEILING_DIRECTORIES", parent);
    }
    let log = root.join("mpy-cross").join("moat-build.log");
    run_logged(make, &log, |_| {}).context("cannot build mpy-cross")?;
    if !mpy_cross_path(root).is_file() {
        bail!(
            "mpy-cross built but {} is missing",
            mpy_cross_path(root).display()
        );
    }
    Ok(())
}

/// Parallel jobs for make: the machine's cores.
pub fn jobs() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

fn short_hash(s: &str) -> String {
    hex::encode(&Sha256::digest(s.as_bytes())[..6])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_that_escape_the_cache_are_rejected() {
        for bad in ["", "../x", ".hidden", "1.25/0", "a b"] {
            assert!(check_version(bad).is_err(), "{bad}");
        }
        check_version("1.25.0").unwrap();
    }

    #[test]
    fn a_path_trees_stamp_follows_its_sources_not_its_build_folders() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path();
        std::fs::create_dir_all(t.join("py")).unwrap();
        std::fs::create_dir_all(t.join("ports/unix/build-standard")).unwrap();
        std::fs::write(t.join("py/vm.c"), "int x;").unwrap();
        let first = path_stamp(t);
        assert_eq!(path_stamp(t), first);
        std::fs::write(t.join("ports/unix/build-standard/vm.o"), "obj").unwrap();
        assert_eq!(path_stamp(t), first, "build output is not source");
        std::fs::write(t.join("py/vm.c"), "int xy;").unwrap();
        let edited = path_stamp(t);
        assert_ne!(edited, first, "an edited source changes the stamp");
        std::fs::write(t.join("py/new.c"), "").unwrap();
        assert_ne!(path_stamp(t), edited, "a new file changes the stamp");
    }

    #[test]
    fn path_that_is_not_a_tree_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::at(dir.path().join("c"));
        let err = provide(
            &SourceSpec::Path(dir.path().into()),
            &[],
            &cache,
            &mut |_| {},
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("not a MicroPython tree"), "{err}");
    }
}
