//! Shared helpers for the end-to-end tests: the `moat` binary, projects
//! made by `moat init`, and a unix-port satellite firmware built by
//! `moat build` once per test run.
//!
//! - [`moat_bin`]: `$MOAT_BIN` if set, else `cargo build -p moat --bin
//!   moat` (a no-op after `cargo test --workspace` built it), the path
//!   cargo reports, copied into [`e2e_dir`]`/bin/` so a concurrent `cargo
//!   build` cannot swap the tool mid-test. Works from any test crate, in
//!   any profile or target dir.
//! - [`e2e_dir`] is `<target>/<profile>/moat-e2e/` (next to the test
//!   executables' `deps/`).
//! - Every `moat` run through [`moat`] uses a MicroPython cache shared by
//!   all tests: `$MOAT_TEST_CACHE`, else `e2e_dir/cache` (so the first run
//!   fetches MicroPython once and later runs reuse it).
//! - [`unix_satellite`]: the firmware of node `demo` of a project created
//!   by `moat init` under `e2e_dir/satellite` (re-made when `moat init`'s
//!   scaffold changes), rebuilt by
//!   `moat build` when the embedded node runtime changed (a no-op
//!   otherwise). A file lock makes parallel test processes share it; the
//!   firmware is replaced by rename, so a running copy is never disturbed.

use anyhow::{bail, Context};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

pub mod bench;
pub mod broker;
pub mod esp_rom_sim;
pub mod fault_proxy;
pub mod node;

/// The `moat` binary (built on first use).
pub fn moat_bin() -> PathBuf {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| locate_moat().map_err(|e| format!("{e:#}")))
        .clone()
        .unwrap_or_else(|e| panic!("cannot provide the moat binary: {e}"))
}

fn locate_moat() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("MOAT_BIN") {
        return Ok(PathBuf::from(p));
    }
    let built = cargo_build_moat()?;
    snapshot(&built)
}

/// A private copy of `bin`, so a `cargo build` running meanwhile (which
/// replaces `target/debug/moat`) cannot change the tool under a test.
/// Named by size and mtime: each distinct build is copied once.
fn snapshot(bin: &Path) -> anyhow::Result<PathBuf> {
    let meta = std::fs::metadata(bin).with_context(|| format!("{}", bin.display()))?;
    let mtime = meta
        .modified()?
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    let dir = e2e_dir().join("bin");
    std::fs::create_dir_all(&dir)?;
    let copy = dir.join(format!("moat-{}-{mtime}", meta.len()));
    if !copy.is_file() {
        let tmp = dir.join(format!(".moat-{}.tmp", std::process::id()));
        std::fs::copy(bin, &tmp)?;
        std::fs::rename(&tmp, &copy)?;
        prune_snapshots(&dir);
    }
    Ok(copy)
}

/// Removes snapshots nobody has used for a day (each is a whole debug
/// binary; a working copy rebuilt all day would fill the disk).
fn prune_snapshots(dir: &Path) {
    let day = std::time::Duration::from_secs(24 * 3600);
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let old = e
            .metadata()
            .and_then(|m| m.accessed().or_else(|_| m.modified()))
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > day);
        if old {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

fn cargo_build_moat() -> anyhow::Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root()).args([
        "build",
        "-p",
        "moat",
        "--bin",
        "moat",
        "--message-format=json-render-diagnostics",
    ]);
    if std::env::var_os("CI").is_some_and(|v| v == "true") {
        cmd.arg("--locked");
    }
    let out = cmd.output().context("cannot run cargo")?;
    if !out.status.success() {
        bail!(
            "cargo build -p moat failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["reason"] == "compiler-artifact" && v["target"]["name"] == "moat" {
            if let Some(exe) = v["executable"].as_str() {
                return Ok(PathBuf::from(exe));
            }
        }
    }
    bail!("cargo build -p moat reported no `moat` executable")
}

/// The workspace's root folder.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_path_buf()
}

/// Scratch space shared by all e2e tests of this target dir.
pub fn e2e_dir() -> PathBuf {
    // Test executables live in `<target>/<profile>/deps/`.
    let exe = std::env::current_exe().expect("test executable path");
    let d = exe
        .ancestors()
        .nth(2)
        .expect("test executable under <target>/<profile>/deps")
        .join("moat-e2e");
    std::fs::create_dir_all(&d).expect("create moat-e2e folder");
    d
}

/// The MicroPython cache all tests share (`XDG_CACHE_HOME` of `moat`).
pub fn test_cache() -> PathBuf {
    std::env::var_os("MOAT_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| e2e_dir().join("cache"))
}

/// A `moat` command using the shared test cache, run in `cwd`.
pub fn moat(cwd: &Path) -> Command {
    let mut c = Command::new(moat_bin());
    c.current_dir(cwd)
        .env("XDG_CACHE_HOME", test_cache())
        .env_remove("MOAT_LOG");
    c
}

/// Runs `cmd`, failing with its output unless it succeeds.
pub fn run_ok(cmd: &mut Command) -> anyhow::Result<Output> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// The JSON objects (one per line) of `moat … --json` output.
pub fn json_lines(stdout: &[u8]) -> anyhow::Result<Vec<serde_json::Value>> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l}")))
        .collect()
}

/// Whether the host tools a firmware build needs are on `PATH`. When one
/// is missing: under `CI=true` this panics (CI must build for real);
/// otherwise it prints why and returns false so the caller can return
/// early.
pub fn build_tools_present() -> bool {
    tools_present(
        &["make", "gcc", "python3", "tar", "xz"],
        "install build-essential, python3, xz-utils",
    )
}

/// Whether every program of `tools` is on PATH. Under `CI=true` a missing
/// one fails the test (`.ci/run` installs them: `install` says how);
/// otherwise the test says why and returns.
pub fn tools_present(tools: &[&str], install: &str) -> bool {
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !on_path(t)).collect();
    if missing.is_empty() {
        return true;
    }
    if std::env::var_os("CI").is_some_and(|v| v == "true") {
        panic!("CI=true but {missing:?} are missing ({install})");
    }
    eprintln!("SKIPPED: {missing:?} missing; install them to run this test");
    false
}

/// Whether `program` is on PATH.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

/// A project made by `moat init` in a temporary folder (removed on drop).
pub struct TempProject {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl TempProject {
    /// The project's folder (holds `moat.toml`).
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// A `moat` command run in the project.
    pub fn moat(&self) -> Command {
        moat(&self.root)
    }
}

/// `moat init DIR --board BOARD` into a fresh temporary folder.
pub fn temp_project(board: &str) -> anyhow::Result<TempProject> {
    let dir = tempfile::Builder::new().prefix("moat-e2e-").tempdir()?;
    let root = dir.path().join("proj");
    run_ok(
        moat(dir.path())
            .arg("init")
            .arg(&root)
            .args(["--board", board]),
    )?;
    Ok(TempProject { _dir: dir, root })
}

/// The shared unix satellite project (`moat init`, board unix).
pub fn satellite_project() -> anyhow::Result<PathBuf> {
    unix_satellite()?;
    Ok(e2e_dir().join("satellite"))
}

/// The unix-port firmware of node `demo` of the shared satellite project,
/// built (or found current) by `moat build` once per test process.
pub fn unix_satellite() -> anyhow::Result<PathBuf> {
    static FW: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    FW.get_or_init(|| build_satellite().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn build_satellite() -> anyhow::Result<PathBuf> {
    let base = e2e_dir();
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(base.join("satellite.lock"))?;
    lock.lock().context("cannot lock the satellite project")?;
    let root = base.join("satellite");
    // `moat init` afresh; the kept project (and its build state) is
    // replaced only when the scaffold changed, e.g. after an edit of the
    // init templates, or after an interrupted run.
    let fresh_base = base.join("satellite.fresh");
    let _ = std::fs::remove_dir_all(&fresh_base);
    std::fs::create_dir_all(&fresh_base)?;
    let fresh = fresh_base.join("satellite");
    run_ok(moat(&fresh_base).arg("init").arg(&fresh))?;
    if project_files(&fresh)? != project_files(&root).unwrap_or_default() {
        let _ = std::fs::remove_dir_all(&root);
        std::fs::rename(&fresh, &root)?;
    }
    let _ = std::fs::remove_dir_all(&fresh_base);
    let out = run_ok(moat(&root).args(["build", "--node", "demo", "--json"]))?;
    let objs = json_lines(&out.stdout)?;
    let fw = objs
        .first()
        .and_then(|o| o["firmware"].as_str())
        .context("moat build --json printed no firmware")?;
    Ok(PathBuf::from(fw))
}

/// A project's files (path relative to `root` → content), without `.moat/`.
fn project_files(root: &Path) -> anyhow::Result<std::collections::BTreeMap<PathBuf, Vec<u8>>> {
    let mut out = std::collections::BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for e in std::fs::read_dir(&dir)? {
            let p = e?.path();
            if p.file_name().is_some_and(|n| n == ".moat") {
                continue;
            }
            if p.is_dir() {
                todo.push(p);
            } else if p.file_name().is_some_and(|n| n == "moat.toml") {
                // `moat init` writes a random project id and TCP port:
                // those alone do not change the scaffold.
                let text = std::fs::read_to_string(&p)?;
                let same: String = text
                    .lines()
                    .filter(|l| !l.starts_with("id = ") && !l.starts_with("link = "))
                    .collect();
                out.insert(p.strip_prefix(root)?.to_path_buf(), same.into_bytes());
            } else {
                out.insert(p.strip_prefix(root)?.to_path_buf(), std::fs::read(&p)?);
            }
        }
    }
    Ok(out)
}

/// One test module per scenario `fn name(heap_kb)`, run at a roomy heap
/// (256 KiB) and at a device-sized one (64 KiB).
#[macro_export]
macro_rules! both_heaps {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn heap_256k() {
                super::$name(256)
            }
            #[test]
            fn heap_64k() {
                super::$name(64)
            }
        }
    )*};
}

/// One-shot `moat` invocations back to back against one after a pause
/// (issue 18): what [`back_to_back`] measured.
#[derive(Debug)]
pub struct BackToBack {
    /// The slower of two invocations, each after `pause`.
    pub reference: std::time::Duration,
    /// Each of the back-to-back invocations.
    pub times: Vec<std::time::Duration>,
}

impl BackToBack {
    pub fn total(&self) -> std::time::Duration {
        self.times.iter().sum()
    }

    /// Fails unless the back-to-back invocations took at most `ratio`
    /// times the reference each, on average.
    pub fn assert_within(&self, ratio: f64) {
        let bound = self.times.len() as f64 * ratio * self.reference.as_secs_f64();
        assert!(
            self.total().as_secs_f64() <= bound,
            "{} back-to-back invocations took {:?}, more than {ratio}x as many as one after a \
             pause ({:?}): {:?}",
            self.times.len(),
            self.total(),
            self.reference,
            self.times
        );
    }
}

/// Runs `moat ARGS` in `root` until it succeeds once (the node may still be
/// booting; each try waits for the link within the client's own timeout,
/// `tries` of them), then twice after `pause` each (the reference), then
/// `n` times back to back. Every run must succeed with `expect` on stdout.
pub fn back_to_back(
    root: &Path,
    args: &[&str],
    expect: &str,
    pause: std::time::Duration,
    n: usize,
) -> anyhow::Result<BackToBack> {
    let run = || -> anyhow::Result<std::time::Duration> {
        let t = std::time::Instant::now();
        let out = moat(root).args(args).output()?;
        let took = t.elapsed();
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || !stdout.contains(expect) {
            bail!(
                "moat {args:?} failed ({}): {stdout}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(took)
    };
    let mut first = run();
    for _ in 0..2 {
        if first.is_ok() {
            break;
        }
        first = run();
    }
    first.context("the node never answered")?;
    let mut reference = std::time::Duration::ZERO;
    for _ in 0..2 {
        std::thread::sleep(pause); // the pause being measured
        reference = reference.max(run()?);
    }
    let times = (0..n).map(|_| run()).collect::<anyhow::Result<Vec<_>>>()?;
    let m = BackToBack { reference, times };
    eprintln!(
        "moat {args:?}: one after a {pause:?} pause {:?} (the slower of two); {n} back to back \
         {:?}: {:?}",
        m.reference,
        m.total(),
        m.times
    );
    Ok(m)
}

/// Copies the folder `from` into `to`, recursively.
pub fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Copies the folder `from` to `to` (made when missing), recursively.
pub fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}
