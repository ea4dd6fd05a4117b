//! The native module (`node-runtime/native`, `_moat`) in the firmware of
//! two different ports moat builds here: the unix port (64-bit x86, gcc)
//! and qemu-mps2 (32-bit Cortex-M3, arm-none-eabi-gcc). For each, `moat
//! build` must have compiled it into the firmware with the port's own flags
//! (which include `-Wall -Werror`), and it must compile again with
//! `-Wall -Wextra -Werror` added. The unix firmware then runs it: `_moat`
//! is there and msgpack.py uses it. (What it computes is checked by
//! node-runtime/tests against the shared vectors, and fuzzed by
//! bench/fuzz_node.py.)

use anyhow::Context;
use moat_e2e::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A project with one node per board, built by `moat build` (incremental
/// across runs: the project lives in the e2e folder).
fn built_project() -> PathBuf {
    let root = e2e_dir().join("native-module");
    std::fs::create_dir_all(root.join("apps")).unwrap();
    std::fs::write(
        root.join("moat.toml"),
        "[project]\nname = \"native\"\n\n[apps]\npaths = [\"apps\"]\n\n\
         [nodes.u]\nboard = \"unix\"\nport = \"tcp:127.0.0.1:1\"\n\n\
         [nodes.q]\nboard = \"qemu-mps2\"\nport = \"tcp:127.0.0.1:1\"\n",
    )
    .unwrap();
    run_ok(moat(&root).args(["build"])).unwrap_or_else(|e| panic!("{e:#}"));
    root
}

/// The recorded make variables of target `t` (record.json's build_args).
fn build_args(root: &Path, t: &str) -> Vec<String> {
    let rec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root.join(format!(".moat/build/{t}/record.json"))).unwrap(),
    )
    .unwrap();
    rec["inputs"]["build_args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

/// The MicroPython tree the target was built from (the path its
/// `-ffile-prefix-map` maps to /moat/micropython).
fn tree(args: &[String]) -> PathBuf {
    let extra = args
        .iter()
        .find_map(|a| a.strip_prefix("CFLAGS_EXTRA="))
        .expect("CFLAGS_EXTRA in the build args");
    extra
        .split_whitespace()
        .find_map(|w| {
            w.strip_prefix("-ffile-prefix-map=")?
                .strip_suffix("=/moat/micropython")
        })
        .map(PathBuf::from)
        .expect("the MicroPython tree in CFLAGS_EXTRA")
}

/// Checks target `t` (port `port`): the object is in its build, and the
/// port's compile command for it, re-run with -Wextra added, passes.
fn check_compiled(root: &Path, t: &str, port: &str) {
    let dir = root.join(format!(".moat/build/{t}"));
    let port_build = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("port-"))
        })
        .expect("a port build folder");
    let object = port_build.join("moat/moat_native.o");
    assert!(object.is_file(), "{t}: no {}", object.display());
    let args = build_args(root, t);
    assert!(
        args.iter().any(|a| a.starts_with("USER_C_MODULES=")),
        "{args:?}"
    );
    let port_dir = tree(&args).join("ports").join(port);
    let source = dir.join("gen/cmods/moat/moat_native.c");
    // What make would run for the object were its source new.
    let out = run_ok(
        Command::new("make")
            .arg("-n")
            .arg("-C")
            .arg(&port_dir)
            .arg("V=1")
            .arg(format!("BUILD={}", port_build.display()))
            .args(&args)
            .arg("-W")
            .arg(&source)
            .arg(&object)
            .env_remove("MAKEFLAGS")
            .env_remove("MAKELEVEL"),
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    let plan = String::from_utf8_lossy(&out.stdout).to_string();
    let compile = plan
        .lines()
        .map(str::trim)
        .find(|l| l.contains(&format!("-o {}", object.display())) && l.contains("moat_native.c"))
        .unwrap_or_else(|| panic!("{t}: make -n has no compile of moat_native.c:\n{plan}"));
    for flag in ["-Wall", "-Werror"] {
        assert!(
            compile.split_whitespace().any(|w| w == flag),
            "{t}: {flag} missing: {compile}"
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    // (the port's own error hint after `||` left out)
    let again = compile
        .split(" || ")
        .next()
        .unwrap()
        .replace(
            &format!("-o {}", object.display()),
            &format!("-o {}/m.o", tmp.path().display()),
        )
        .replace(
            &port_build.join("moat/moat_native.d").display().to_string(),
            &tmp.path().join("m.d").display().to_string(),
        );
    run_ok(
        Command::new("bash")
            .arg("-c")
            .arg(format!(
                "{again} -Wall -Wextra -Wno-unused-parameter -Werror"
            ))
            .current_dir(&port_dir),
    )
    .with_context(|| format!("{t}: {again}"))
    .unwrap_or_else(|e| panic!("{e:#}"));
}

#[test]
fn the_native_module_compiles_into_unix_and_qemu_firmware_with_warnings_as_errors() {
    if !build_tools_present()
        || !tools_present(
            &["arm-none-eabi-gcc", "patch"],
            "apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi patch",
        )
    {
        return;
    }
    let root = built_project();
    check_compiled(&root, "u", "unix");
    check_compiled(&root, "q", "qemu");

    // The unix firmware has it, and msgpack.py is on it.
    let fw = root.join(".moat/build/u/firmware/micropython");
    let tmp = tempfile::tempdir().unwrap();
    let script = tmp.path().join("t.py");
    std::fs::write(
        &script,
        "import _moat, msgpack, serpack\n\
         assert msgpack._N is _moat and serpack._N is _moat\n\
         b = msgpack.packb({'a': ['ping'], 'i': 2})\n\
         assert msgpack.unpackb(b) == {'a': ['ping'], 'i': 2}\n\
         print('native ok')\n",
    )
    .unwrap();
    let out = run_ok(Command::new(&fw).arg(&script).env_remove("MICROPYPATH"))
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("native ok"),
        "{out:?}"
    );
}
