//! `moat init` + `moat build` for real: a unix-port MicroPython firmware
//! whose frozen `_hash` table matches its sources, no-op rebuilds that
//! never run make, incremental rebuilds after an app edit, boards without a
//! toolchain failing at the compiler step, and the examples building.

use anyhow::Context;
use moat_e2e::*;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

type Table = BTreeMap<String, String>;

/// The `_hash` table as the firmware itself reports it (`name hex` lines).
fn firmware_table(firmware: &Path) -> anyhow::Result<Table> {
    let script = "import _hash, binascii\n\
                  for k in sorted(_hash.hashes):\n    \
                  print(k, binascii.hexlify(_hash.hashes[k]).decode())\n";
    let out = run_ok(Command::new(firmware).args(["-c", script]))?;
    Ok(String::from_utf8(out.stdout)?
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

/// `modules` of a `moat build --json` object.
fn json_table(obj: &serde_json::Value) -> Table {
    obj["modules"]
        .as_object()
        .expect("modules is an object")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().expect("hex string").to_string()))
        .collect()
}

fn build_json(project: &Path, extra: &[&str]) -> anyhow::Result<Vec<serde_json::Value>> {
    let out = run_ok(moat(project).arg("build").args(extra).arg("--json"))?;
    json_lines(&out.stdout)
}

fn hash8(bytes: &[u8]) -> String {
    hex::encode(&Sha256::digest(bytes)[..8])
}

/// The frozen files (`asyncio/core.py`, …) listed in the compiled
/// firmware's `frozen_content.c` (the port build's ground truth).
fn frozen_files(target_dir: &Path) -> anyhow::Result<Vec<String>> {
    let port = std::fs::read_dir(target_dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("port-")
        })
        .context("no port build folder")?;
    let c = std::fs::read_to_string(port.join("frozen_content.c"))?;
    let names = c
        .split("mp_frozen_names[] = {")
        .nth(1)
        .context("no mp_frozen_names in frozen_content.c")?;
    let names = names.split("};").next().unwrap();
    Ok(names
        .lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix('"')?
                .strip_suffix("\\0\"")
                .map(String::from)
        })
        .filter(|n| !n.is_empty())
        .collect())
}

/// The source of a frozen file: the project's apps, the node runtime as
/// `moat build` wrote it out of the binary (the repository's
/// `node-runtime/` when the binary is current), or the cached MicroPython
/// tree's asyncio.
fn source_of(file: &str, project: &Path) -> anyhow::Result<PathBuf> {
    let mpy = test_cache().join("moat/micropython/1.25.0/extmod");
    let candidates = [
        project.join("apps").join(file),
        project.join(".moat/build/demo/gen/runtime").join(file),
        mpy.join(file),
        mpy.join("asyncio").join(file),
    ];
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .with_context(|| format!("no source found for frozen file {file}"))
}

fn module_name(file: &str) -> String {
    let stem = file.strip_suffix(".py").unwrap();
    stem.strip_suffix("/__init__")
        .unwrap_or(stem)
        .replace('/', ".")
}

#[test]
fn init_then_build_gives_a_unix_firmware_whose_hash_table_matches_every_frozen_source() {
    if !build_tools_present() {
        return;
    }
    let firmware = unix_satellite().expect("unix satellite builds");
    let project = satellite_project().unwrap();
    let objs = build_json(&project, &[]).unwrap();
    assert_eq!(objs.len(), 1, "one node: {objs:?}");
    let obj = &objs[0];
    assert_eq!(obj["node"], "demo");
    assert_eq!(obj["board"], "unix");
    assert_eq!(Path::new(obj["firmware"].as_str().unwrap()), firmware);
    let fw_bytes = std::fs::read(&firmware).unwrap();
    assert_eq!(
        obj["firmware_sha256"],
        hex::encode(Sha256::digest(&fw_bytes))
    );

    // The firmware names MicroPython's release and its source date, not
    // the repository the cache may sit in (here: target/ in moat's repo).
    let version =
        run_ok(Command::new(&firmware).args(["-c", "import sys; print(sys.version)"])).unwrap();
    let version = String::from_utf8_lossy(&version.stdout);
    assert!(
        version.contains("MicroPython v1.25.0 on 2025-04-15"),
        "{version}"
    );

    // The firmware's own table is what --json reports…
    let in_firmware = firmware_table(&firmware).unwrap();
    assert_eq!(in_firmware, json_table(obj));

    // …and covers exactly the frozen files (minus _hash), each with
    // sha256(source)[:8].
    let files = frozen_files(&project.join(".moat/build/demo")).unwrap();
    assert!(files.iter().any(|f| f == "_hash.py"), "{files:?}");
    assert!(
        files.iter().any(|f| f == "main.py"),
        "runtime frozen: {files:?}"
    );
    assert!(files.iter().any(|f| f == "asyncio/core.py"), "{files:?}");
    let mut expected = Table::new();
    for f in files.iter().filter(|f| *f != "_hash.py") {
        let src = std::fs::read(source_of(f, &project).unwrap()).unwrap();
        expected.insert(module_name(f), hash8(&src));
    }
    assert_eq!(in_firmware, expected);
}

/// A `make` that records being run and fails: put first on PATH, it
/// proves whether a build ran the compiler.
fn make_trap(dir: &Path) -> (PathBuf, String) {
    let bin = dir.join("trap-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let marker = dir.join("make-ran");
    let script = format!("#!/bin/sh\ntouch '{}'\nexit 1\n", marker.display());
    let make = bin.join("make");
    std::fs::write(&make, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&make, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = std::env::join_paths(
        std::iter::once(bin).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap())),
    )
    .unwrap();
    (marker, path.to_string_lossy().into_owned())
}

#[test]
fn unchanged_project_rebuilds_nothing_and_an_edited_app_changes_only_its_hash() {
    if !build_tools_present() {
        return;
    }
    let p = temp_project("unix").unwrap();
    let first = build_json(p.path(), &[]).unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0]["rebuilt"], true);
    let firmware = PathBuf::from(first[0]["firmware"].as_str().unwrap());
    let log = p.path().join(".moat/build/demo/build.log");
    let fw_mtime = std::fs::metadata(&firmware).unwrap().modified().unwrap();
    let log_before = std::fs::read(&log).unwrap();

    // Second build: same answer, and make is never started.
    let (marker, trap_path) = make_trap(p.path().parent().unwrap());
    let out = run_ok(p.moat().args(["build", "--json"]).env("PATH", &trap_path)).unwrap();
    let second = json_lines(&out.stdout).unwrap();
    assert_eq!(second[0]["rebuilt"], false);
    assert_eq!(second[0]["firmware_sha256"], first[0]["firmware_sha256"]);
    assert_eq!(second[0]["modules"], first[0]["modules"]);
    assert!(!marker.exists(), "make ran on a no-op build");
    assert_eq!(
        std::fs::metadata(&firmware).unwrap().modified().unwrap(),
        fw_mtime
    );
    assert_eq!(std::fs::read(&log).unwrap(), log_before);

    // Edit one app module: rebuilt, and only that module's hash moves.
    let app = std::fs::read_dir(p.path().join("apps"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|f| f.extension().is_some_and(|x| x == "py"))
        .expect("moat init writes an example app");
    let app_module = app.file_stem().unwrap().to_string_lossy().into_owned();
    let mut src = std::fs::read(&app).unwrap();
    src.extend_from_slice(b"\n# edited by the test\n");
    std::fs::write(&app, &src).unwrap();
    let third = build_json(p.path(), &[]).unwrap();
    assert_eq!(third[0]["rebuilt"], true);
    let (before, after) = (json_table(&first[0]), json_table(&third[0]));
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    let changed: Vec<&String> = before.keys().filter(|k| before[*k] != after[*k]).collect();
    assert_eq!(changed, [&app_module]);
    assert_eq!(after[&app_module], hash8(&src));
    assert_eq!(firmware_table(&firmware).unwrap(), after);
    assert_ne!(third[0]["firmware_sha256"], first[0]["firmware_sha256"]);
}

#[test]
fn board_without_toolchain_fails_at_the_compiler_after_generating_manifest_and_hash() {
    if !build_tools_present() {
        return;
    }
    let p = temp_project("unix").unwrap();
    // An empty SDK folder: the toolchain is incomplete on any machine.
    let empty = tempfile::tempdir().unwrap();
    let out = p
        .moat()
        .args(["build", "--board", "esp8266"])
        .env("ESP_SDK", empty.path())
        .output()
        .unwrap();
    assert!(!out.status.success(), "esp8266 build cannot succeed here");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ESP8266 NONOS SDK: headers missing"), "{err}");
    assert!(
        err.contains("esp-open-sdk"),
        "board's install hint shown: {err}"
    );
    let gen = p.path().join(".moat/build/_board-esp8266/gen");
    let manifest = gen.join("manifest.py");
    let hash = gen.join("hash/_hash.py");
    assert!(err.contains(&manifest.display().to_string()), "{err}");
    assert!(err.contains(&hash.display().to_string()), "{err}");
    let manifest = std::fs::read_to_string(manifest).unwrap();
    assert!(
        manifest.contains("$(PORT_DIR)/modules"),
        "port's _boot.py frozen: {manifest}"
    );
    let hash = std::fs::read_to_string(hash).unwrap();
    assert!(hash.contains("\"main\": b\""), "{hash}");
    assert!(
        hash.contains("\"inisetup\": b\""),
        "port modules hashed too: {hash}"
    );
}

#[test]
fn examples_build_their_unix_nodes() {
    if !build_tools_present() {
        return;
    }
    let examples = workspace_root().join("examples");
    let mut built = vec![];
    for e in std::fs::read_dir(&examples).unwrap() {
        let src = e.unwrap().path();
        if !src.join("moat.toml").is_file() {
            continue;
        }
        let tmp = tempfile::tempdir().unwrap();
        let proj = tmp.path().join(src.file_name().unwrap());
        copy_tree(&src, &proj).unwrap();
        let objs = build_json(&proj, &["--board", "unix"])
            .with_context(|| format!("example {}", src.display()))
            .unwrap();
        assert!(!objs.is_empty());
        for o in &objs {
            assert_eq!(o["board"], "unix");
            let fw = PathBuf::from(o["firmware"].as_str().unwrap());
            assert_eq!(
                firmware_table(&fw).unwrap(),
                json_table(o),
                "{}",
                src.display()
            );
        }
        built.push(src);
    }
    assert!(
        built.len() >= 2,
        "examples blink and garden exist: {built:?}"
    );
}

/// Copies a project (without its `.moat/` state).
fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let p = e?.path();
        let name = p.file_name().unwrap();
        if name == ".moat" {
            continue;
        }
        if p.is_dir() {
            copy_tree(&p, &to.join(name))?;
        } else {
            std::fs::copy(&p, to.join(name))?;
        }
    }
    Ok(())
}

#[test]
fn the_same_project_in_another_folder_builds_identical_firmware() {
    if !build_tools_present() {
        return;
    }
    unix_satellite().expect("unix satellite builds");
    let original = satellite_project().unwrap();
    let first = build_json(&original, &[]).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("elsewhere");
    copy_tree(&original, &copy).unwrap();
    let second = build_json(&copy, &[]).unwrap();
    assert_eq!(second[0]["rebuilt"], true, "a copy has no build state");
    assert_eq!(second[0]["firmware_sha256"], first[0]["firmware_sha256"]);
}

/// Replaces the `version = "1.25.0"` line of a project's moat.toml.
fn set_micropython(project: &Path, line: &str) {
    let path = project.join("moat.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let old = text
        .lines()
        .find(|l| l.trim_start().starts_with("version = "))
        .expect("moat init writes [micropython] version")
        .to_string();
    std::fs::write(&path, text.replace(&old, line)).unwrap();
}

#[test]
fn micropython_version_debian_lacks_is_refused_naming_what_it_offers() {
    if !build_tools_present() {
        return;
    }
    let p = temp_project("unix").unwrap();
    set_micropython(p.path(), r#"version = "9.9.9""#);
    let out = p.moat().arg("build").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no MicroPython 9.9.9"), "{err}");
    assert!(err.contains("1.25.0"), "names the version it offers: {err}");
    assert!(!test_cache().join("moat/micropython/9.9.9").exists());
}

#[test]
fn a_local_micropython_tree_given_as_path_builds() {
    if !build_tools_present() {
        return;
    }
    // The cached tree of the default version serves as a local checkout.
    unix_satellite().expect("unix satellite builds (fills the cache)");
    let tree = test_cache().join("moat/micropython/1.25.0");
    let p = temp_project("unix").unwrap();
    set_micropython(
        p.path(),
        &format!("path = {:?}", tree.display().to_string()),
    );
    let objs = build_json(p.path(), &[]).unwrap();
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(p.path().join(".moat/build/demo/record.json")).unwrap(),
    )
    .unwrap();
    // the tree's id, then a stamp of its files (edits in place rebuild)
    let source = record["inputs"]["source"].as_str().unwrap();
    let id = format!("path:{} ", tree.canonicalize().unwrap().display());
    assert!(source.starts_with(&id), "{source}");
    assert_eq!(source.len(), id.len() + 16, "{source}");
    let fw = PathBuf::from(objs[0]["firmware"].as_str().unwrap());
    assert_eq!(firmware_table(&fw).unwrap(), json_table(&objs[0]));
}

#[test]
fn a_git_micropython_source_is_cloned_at_its_rev_and_builds() {
    if !build_tools_present() {
        return;
    }
    assert!(
        moat_e2e::on_path("git") || std::env::var_os("CI").is_none_or(|v| v != "true"),
        "CI=true but git is missing"
    );
    if !moat_e2e::on_path("git") {
        eprintln!("SKIPPED: git not installed");
        return;
    }
    // A local repository made from the cached tree stands in for upstream.
    unix_satellite().expect("unix satellite builds (fills the cache)");
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("micropython.git");
    copy_tree(&test_cache().join("moat/micropython/1.25.0"), &repo).unwrap();
    let _ = std::fs::remove_dir_all(repo.join("mpy-cross/build"));
    let git = |args: &[&str]| {
        run_ok(
            Command::new("git")
                .arg("-C")
                .arg(&repo)
                .args(["-c", "user.name=t", "-c", "user.email=t@t"])
                .args(args),
        )
        .unwrap()
    };
    git(&["init", "-q"]);
    git(&["add", "-A"]);
    git(&["commit", "-qm", "import"]);
    git(&["tag", "v1.25.0"]);
    // Later history must not leak into the build.
    std::fs::write(repo.join("NEWER"), "x").unwrap();
    git(&["add", "NEWER"]);
    git(&["commit", "-qm", "newer"]);

    let p = temp_project("unix").unwrap();
    let url = format!("file://{}", repo.display());
    // A cache of its own: the clone is keyed by URL and rev.
    let cache = tmp.path().join("cache");
    set_micropython(p.path(), &format!("git = {url:?}\nrev = \"v1.25.0\""));
    let out = run_ok(
        p.moat()
            .args(["build", "--json"])
            .env("XDG_CACHE_HOME", &cache),
    )
    .unwrap();
    let objs = json_lines(&out.stdout).unwrap();
    let fw = PathBuf::from(objs[0]["firmware"].as_str().unwrap());
    assert_eq!(firmware_table(&fw).unwrap(), json_table(&objs[0]));
    let trees: Vec<PathBuf> = std::fs::read_dir(cache.join("moat/micropython"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(trees.len(), 1, "{trees:?}");
    assert!(trees[0].join("mpy-cross/build/mpy-cross").is_file());
    assert!(!trees[0].join("NEWER").exists(), "checked out at the rev");
}

#[test]
fn an_app_shadowing_a_runtime_module_or_hash_is_refused_before_compiling() {
    if !build_tools_present() {
        return;
    }
    let p = temp_project("unix").unwrap();
    std::fs::write(p.path().join("apps/main.py"), "x = 1\n").unwrap();
    let out = p.moat().arg("build").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`main` is frozen twice"), "{err}");
    assert!(err.contains("apps/main.py"), "{err}");
    assert!(
        !p.path().join(".moat/build/demo/build.log").exists(),
        "make never ran"
    );

    std::fs::remove_file(p.path().join("apps/main.py")).unwrap();
    std::fs::write(p.path().join("apps/_hash.py"), "x = 1\n").unwrap();
    let out = p.moat().arg("build").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("reserves"), "{err}");
}
