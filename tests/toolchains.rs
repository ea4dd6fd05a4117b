//! `moat build` and `moat boards` with a board's whole toolchain: a fake
//! ESP8266 SDK missing headers or libraries, a fake ESP-IDF of the wrong
//! version (each named exactly, the build stopping before make), and a
//! compiler found only through `[toolchains]` being the one make runs.

use moat_e2e::*;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

/// Writes an executable shell script.
fn script(path: &Path, body: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A folder in which every listed file exists (empty).
fn fake_tree(root: &Path, files: &[&str]) {
    for f in files {
        let p = root.join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, "").unwrap();
    }
}

const ESP8266_HEADERS: &[&str] = &[
    "include/user_interface.h",
    "include/ets_sys.h",
    "include/osapi.h",
    "include/os_type.h",
    "include/c_types.h",
    "include/gpio.h",
    "include/mem.h",
    "include/spi_flash.h",
    "include/espconn.h",
    "include/eagle_soc.h",
    "include/esp_sdk_ver.h",
    "include/espnow.h",
    "include/lwip/dns.h",
];
const ESP8266_LIBS: &[&str] = &[
    "lib/libmain.a",
    "lib/libjson.a",
    "lib/liblwip_open.a",
    "lib/libpp.a",
    "lib/libnet80211.a",
    "lib/libwpa.a",
    "lib/libphy.a",
    "lib/libespnow.a",
];

/// A fake `xtensa-lx106-elf-gcc` in `dir/bin`: logs every call to
/// `dir/cc.log`, answers `-print-sysroot` with `dir/sysroot`, preprocesses
/// stdin (moat's C-library probe) and fails on anything else (make).
fn fake_xtensa(dir: &Path) -> (PathBuf, PathBuf) {
    let bin = dir.join("bin");
    let log = dir.join("cc.log");
    script(
        &bin.join("xtensa-lx106-elf-gcc"),
        &format!(
            "echo \"$*\" >> '{log}'\n\
             [ \"$1\" = -print-sysroot ] && {{ echo '{root}'; exit 0; }}\n\
             for a; do last=$a; done\n\
             [ \"$last\" = - ] && exit 0\n\
             echo 'fake xtensa-lx106-elf-gcc: not a real compiler' >&2\nexit 1\n",
            log = log.display(),
            root = dir.join("sysroot").display()
        ),
    );
    (bin, log)
}

/// A `make` first on `PATH` that records being run and fails.
fn make_trap(dir: &Path) -> (PathBuf, String) {
    let marker = dir.join("make-ran");
    script(
        &dir.join("trap-bin/make"),
        &format!("touch '{}'\nexit 1\n", marker.display()),
    );
    let path = std::env::join_paths(
        std::iter::once(dir.join("trap-bin"))
            .chain(std::env::split_paths(&std::env::var_os("PATH").unwrap())),
    )
    .unwrap();
    (marker, path.to_string_lossy().into_owned())
}

fn append(file: &Path, text: &str) {
    let mut s = std::fs::read_to_string(file).unwrap();
    s.push_str(text);
    std::fs::write(file, s).unwrap();
}

/// The `  - …` line of a build error that starts with `start`.
fn missing_line<'a>(err: &'a str, start: &str) -> &'a str {
    err.lines()
        .filter_map(|l| l.strip_prefix("  - "))
        .find(|l| l.starts_with(start))
        .unwrap_or_else(|| panic!("no `  - {start}…` line in:\n{err}"))
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const ESP8266_HINT: &str = "get it with esp-open-sdk (https://github.com/pfalcon/esp-open-sdk: `make STANDALONE=y` puts the SDK, lwip and newlib into its compiler's sysroot), or set ESP_SDK (or [toolchains.esp8266] sdk) to a folder holding the SDK's include/ and lib/";

/// Builds `--board esp8266` with the trap make and the given environment;
/// the build must fail without running make.
fn esp8266_build_stops_before_make(p: &TempProject, tmp: &Path, env: &[(&str, &Path)]) -> String {
    let (marker, path) = make_trap(tmp);
    let mut cmd = p.moat();
    cmd.args(["build", "--board", "esp8266"])
        .env("PATH", path)
        .env("XDG_CONFIG_HOME", tmp.join("config"))
        .env_remove("ESP_SDK")
        .env_remove("MOAT_TOOLCHAIN_PATH");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(!marker.exists(), "make ran:\n{err}");
    assert!(
        err.contains(
            "cannot compile `_board-esp8266` for board esp8266, the build stops before make:"
        ),
        "{err}"
    );
    err
}

/// A project, a temporary folder with the fake compiler in `bin/` and a
/// fake SDK in `sdk/` holding `files`: `(project, tmp, bin, sdk)`.
fn esp8266_case(files: &[&str]) -> (TempProject, tempfile::TempDir, PathBuf, PathBuf) {
    let p = temp_project("unix").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (bin, _) = fake_xtensa(tmp.path());
    let sdk = tmp.path().join("sdk");
    fake_tree(&sdk, files);
    (p, tmp, bin, sdk)
}

#[test]
fn an_esp8266_sdk_without_headers_is_named_with_where_moat_looked() {
    if !build_tools_present() {
        return;
    }
    let (p, tmp, bin, sdk) = esp8266_case(&[ESP8266_LIBS, &["include/README"]].concat());
    let err = esp8266_build_stops_before_make(
        &p,
        tmp.path(),
        &[("ESP_SDK", &sdk), ("MOAT_TOOLCHAIN_PATH", &bin)],
    );
    assert_eq!(
        missing_line(&err, "ESP8266 NONOS SDK"),
        format!(
            "ESP8266 NONOS SDK: headers missing in {} (ESP_SDK (environment)): \
             include/user_interface.h, include/ets_sys.h, include/osapi.h, include/os_type.h \
             (and 9 more); {ESP8266_HINT}",
            sdk.display()
        )
    );
    assert_eq!(err.matches("\n  - ").count(), 1, "only the headers: {err}");
}

#[test]
fn an_esp8266_sdk_without_libraries_is_named_with_where_moat_looked() {
    if !build_tools_present() {
        return;
    }
    let (p, tmp, bin, sdk) = esp8266_case(&[ESP8266_HEADERS, &ESP8266_LIBS[..6]].concat());
    // Both from moat.toml this time.
    append(
        &p.path().join("moat.toml"),
        &format!(
            "\n[toolchains.esp8266]\nbin = \"{}\"\nsdk = \"{}\"\n",
            bin.display(),
            sdk.display()
        ),
    );
    let err = esp8266_build_stops_before_make(&p, tmp.path(), &[]);
    assert_eq!(
        missing_line(&err, "ESP8266 NONOS SDK"),
        format!(
            "ESP8266 NONOS SDK: libraries missing in {} ([toolchains.esp8266] sdk in {}): \
             lib/libphy.a, lib/libespnow.a; {ESP8266_HINT}",
            sdk.display(),
            p.path().join("moat.toml").display()
        )
    );
    assert_eq!(
        err.matches("\n  - ").count(),
        1,
        "only the libraries: {err}"
    );
}

#[test]
fn an_esp_idf_of_a_version_micropython_does_not_support_is_refused_before_cmake() {
    if !build_tools_present() {
        return;
    }
    let p = temp_project("unix").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let idf = tmp.path().join("esp-idf");
    fake_tree(
        &idf,
        &[
            "tools/idf.py",
            "tools/cmake/project.cmake",
            "install.sh",
            "export.sh",
        ],
    );
    let version = idf.join("components/esp_common/include/esp_idf_version.h");
    std::fs::create_dir_all(version.parent().unwrap()).unwrap();
    std::fs::write(
        &version,
        "#define ESP_IDF_VERSION_MAJOR   5\n#define ESP_IDF_VERSION_MINOR   1\n\
         #define ESP_IDF_VERSION_PATCH   2\n",
    )
    .unwrap();
    let (marker, path) = make_trap(tmp.path());
    let out = p
        .moat()
        .args(["build", "--board", "esp32"])
        .env("PATH", path)
        .env("IDF_PATH", &idf)
        .env("XDG_CONFIG_HOME", tmp.path().join("config"))
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(!marker.exists(), "make ran:\n{err}");
    assert_eq!(
        missing_line(&err, "ESP-IDF"),
        format!(
            "ESP-IDF: v5.1.2 at {} (IDF_PATH (environment)) is not a version the port supports \
             (v5.2, v5.3, v5.4); install ESP-IDF v5.2.2: `git clone -b v5.2.2 --recursive \
             https://github.com/espressif/esp-idf.git && cd esp-idf && ./install.sh esp32 && \
             . ./export.sh`, then set IDF_PATH (or [toolchains.esp32] sdk) to that folder",
            idf.display()
        )
    );
    // `moat boards` says the same.
    let out = p
        .moat()
        .args(["boards"])
        .env("IDF_PATH", &idf)
        .env("XDG_CONFIG_HOME", tmp.path().join("config"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = missing_line(&err, "ESP-IDF");
    assert!(text.contains(line), "moat boards:\n{text}");
}

#[test]
fn a_compiler_named_only_in_the_users_toolchains_file_is_what_make_runs() {
    if !build_tools_present() {
        return;
    }
    let p = temp_project("unix").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (bin, log) = fake_xtensa(tmp.path());
    // A complete fake SDK where the port looks by default: the sysroot
    // the (fake) compiler reports, plus /usr.
    let sdk = tmp.path().join("sysroot/usr");
    fake_tree(&sdk, ESP8266_HEADERS);
    fake_tree(&sdk, ESP8266_LIBS);
    let config = tmp.path().join("config");
    std::fs::create_dir_all(config.join("moat")).unwrap();
    std::fs::write(
        config.join("moat/toolchains.toml"),
        format!("[toolchains.esp8266]\nbin = \"{}\"\n", bin.display()),
    )
    .unwrap();
    let out = p
        .moat()
        .args(["boards"])
        .env("XDG_CONFIG_HOME", &config)
        .env_remove("ESP_SDK")
        .env_remove("MOAT_TOOLCHAIN_PATH")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let esp = text
        .lines()
        .find(|l| l.starts_with("esp8266 "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(esp.contains("buildable here"), "{text}");
    assert!(
        text.contains(&format!(
            "bin {} ([toolchains.esp8266] bin in {})",
            bin.display(),
            config.join("moat/toolchains.toml").display()
        )),
        "{text}"
    );

    let out = p
        .moat()
        .args(["build", "--board", "esp8266"])
        .env("XDG_CONFIG_HOME", &config)
        .env_remove("ESP_SDK")
        .env_remove("MOAT_TOOLCHAIN_PATH")
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(!out.status.success(), "a fake compiler cannot build: {err}");
    assert!(
        err.contains("compiling `_board-esp8266` for board esp8266 failed"),
        "the check passed and make ran: {err}"
    );
    let calls = std::fs::read_to_string(&log).unwrap();
    let from_make: Vec<&str> = calls
        .lines()
        .filter(|l| l.contains(&format!("-I{}/include", sdk.display())))
        .collect();
    assert!(
        !from_make.is_empty(),
        "make ran the configured compiler with the SDK's include/:\n{calls}\n{err}"
    );
}
