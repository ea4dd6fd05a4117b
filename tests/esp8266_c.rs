//! CI compile-check for the ESP8266 without its SDK: the C that moat's
//! build adds to an ESP8266 firmware (the frozen content: node runtime,
//! apps and the `_hash` table, turned into C by MicroPython's manifest
//! tool) is generated exactly as the esp8266 port's make would, and
//! compiled with the port's flags (`-Wall -Werror`, `-mlongcalls`, …) by
//! Debian's `gcc-xtensa-lx106` with picolibc's headers.
//!
//! moat has no C sources of its own yet; when it has (a native module),
//! they belong here too. The port's other sources need the NONOS SDK,
//! which no registry this machine reaches has. Under `CI=true` a missing
//! compiler fails this test; elsewhere it is skipped with a message.

use moat_e2e::*;
use std::path::{Path, PathBuf};
use std::process::Command;

const CC: &str = "xtensa-lx106-elf-gcc";

fn which(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// The commands make would run to build `target` (`make -n`), one a line.
fn make_plan(port: &Path, args: &[String], target: &Path) -> Vec<String> {
    let out = run_ok(
        Command::new("make")
            .arg("-n")
            .arg("-C")
            .arg(port)
            .args(args)
            .arg(target)
            .env_remove("MAKEFLAGS")
            .env_remove("MAKELEVEL"),
    )
    .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with("make"))
        .map(String::from)
        .collect()
}

#[test]
fn the_frozen_content_moat_generates_compiles_for_the_esp8266_with_the_ports_flags() {
    if !build_tools_present()
        || !tools_present(
            &[CC],
            "apt-get install gcc-xtensa-lx106 picolibc-xtensa-lx106-elf",
        )
    {
        return;
    }
    let cc = which(CC).unwrap();
    // picolibc's files are relative to the compiler's prefix (/usr).
    let prefix = cc.parent().unwrap().parent().unwrap().to_path_buf();

    // 1. moat generates the manifest and `_hash` (the build then stops at
    //    the SDK check, which is all that can be had here).
    let p = temp_project("unix").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let no_sdk = tmp.path().join("no-sdk");
    std::fs::create_dir_all(no_sdk.join("include")).unwrap();
    let out = p
        .moat()
        .args(["build", "--board", "esp8266"])
        .env("ESP_SDK", &no_sdk)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ESP8266 NONOS SDK:"), "{err}");
    let gen = p.path().join(".moat/build/_board-esp8266/gen");
    assert!(gen.join("hash/_hash.py").is_file(), "{err}");

    // 2. What the port's make does for frozen_content.o, with the board's
    //    variables, run step by step; only the qstr scan of the port's own
    //    sources (which include SDK headers) is left empty.
    let mpy = test_cache().join("moat/micropython/1.25.0");
    let port = mpy.join("ports/esp8266");
    let build = tmp.path().join("build");
    let board = moat::board::Boards::embedded()
        .get("esp8266")
        .cloned()
        .unwrap();
    let mut args: Vec<String> = vec![
        "V=1".into(),
        format!("BOARD={}", board.board.as_deref().unwrap()),
        format!("BUILD={}", build.display()),
        format!("ESP_SDK={}", no_sdk.display()),
        format!("MPY_LIB_DIR={}", gen.join("mpy-lib").display()),
        format!("FROZEN_MANIFEST={}", gen.join("manifest.py").display()),
        format!(
            "CFLAGS_EXTRA=--specs={}/lib/xtensa-lx106-elf/picolibc.specs --picolibc-prefix={}",
            prefix.display(),
            prefix.display()
        ),
    ];
    args.extend(board.vars.iter().map(|(k, v)| format!("{k}={v}")));
    let object = build.join("frozen_content.o");
    let plan = make_plan(&port, &args, &object);
    let compile = plan
        .iter()
        .find(|l| l.starts_with(CC) && l.contains(&format!("-o {} ", object.display())))
        .unwrap_or_else(|| panic!("make -n has no compile of frozen_content.c:\n{plan:#?}"));
    for flag in ["-Wall", "-Werror", "-mlongcalls"] {
        assert!(compile.split_whitespace().any(|w| w == flag), "{compile}");
    }
    for line in &plan {
        let line = if line.contains("makeqstrdefs.py pp ") {
            // The scan of the port's sources: nothing collected.
            std::fs::create_dir_all(build.join("genhdr")).unwrap();
            format!("touch {}/genhdr/qstr.i.last", build.display())
        } else {
            line.clone()
        };
        run_ok(
            Command::new("bash")
                .args(["-o", "pipefail", "-c"])
                .arg(&line)
                .current_dir(&port),
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
    }
    assert!(object.is_file(), "no {}", object.display());
    let c = std::fs::read_to_string(build.join("frozen_content.c")).unwrap();
    for module in ["_hash.py", "main.py", "link_uart.py", "msgpack.py"] {
        assert!(c.contains(&format!("\"{module}\\0\"")), "{module} frozen");
    }
}
