//! A board's SDK (the `[sdk]` table of its board file): the vendor
//! headers, libraries and tools a port needs besides the compiler (the
//! ESP8266 NONOS SDK, ESP-IDF). Checked before the port's build runs, so
//! that a missing piece is named here instead of failing deep inside make.

use crate::board::Missing;
use crate::toolchains::{Resolved, Setting};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// What a board file says about its SDK.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sdk {
    /// For humans: `ESP8266 NONOS SDK`, `ESP-IDF`.
    pub name: String,
    /// The environment variable naming its folder (`ESP_SDK`, `IDF_PATH`);
    /// moat also sets it for the build.
    pub env: String,
    /// A make variable set to the folder on the build's command line
    /// (`ESP_SDK`: the esp8266 Makefile assigns it, so the environment
    /// alone would not reach it).
    #[serde(default)]
    pub make_var: Option<String>,
    /// The compiler whose sysroot `default` refers to, and which must find
    /// `system_headers`.
    #[serde(default)]
    pub compiler: Option<String>,
    /// Where the port looks when nothing names the folder; `{sysroot}` is
    /// what `compiler -print-sysroot` prints.
    #[serde(default)]
    pub default: Option<String>,
    /// Header files the folder must hold (relative to it).
    #[serde(default)]
    pub headers: Vec<String>,
    /// Library files the folder must hold (relative to it).
    #[serde(default)]
    pub libraries: Vec<String>,
    /// Other files it must hold (tools, build scripts).
    #[serde(default)]
    pub files: Vec<String>,
    /// Headers the compiler itself must find (its C library), with the
    /// SDK's `include/` on the search path as the port has it.
    #[serde(default)]
    pub system_headers: Vec<String>,
    /// Which versions the port supports.
    #[serde(default)]
    pub version: Option<SdkVersion>,
    /// How to get it, shown with every missing piece.
    pub hint: String,
}

/// Where an SDK states its version, and the versions that fit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SdkVersion {
    /// A C header (relative to the SDK's folder) defining
    /// `…_VERSION_MAJOR`, `…_MINOR` and `…_PATCH`.
    pub file: String,
    /// Supported versions: `5.2` matches every 5.2.x, `5.2.2` only itself.
    pub supported: Vec<String>,
}

/// How many missing files one message lists before `(and N more)`.
const LISTED: usize = 4;

impl Sdk {
    /// Checks the SDK: its folder (configured or the port's default), the
    /// files it must hold, the compiler's C library and the version. Gives
    /// the folder when it is usable, and one [`Missing`] per missing piece.
    pub fn check(&self, tc: &Resolved) -> (Option<Setting>, Vec<Missing>) {
        let missing = |problem: String| Missing::Sdk {
            name: self.name.clone(),
            problem,
            hint: self.hint.clone(),
        };
        let compiler = self.compiler.as_deref().map(|c| (c, tc.find(c)));
        let Some(at) = self.locate(tc, compiler.as_ref()) else {
            let mut problem = format!(
                "not found: {} is not set and no {} sdk is in {}",
                self.env, tc.table, tc.config_files
            );
            if let (Some((c, None)), Some(_)) = (&compiler, &self.default) {
                problem.push_str(&format!(
                    ", and `{c}`, whose sysroot the port would use, is missing"
                ));
            }
            return (None, vec![missing(problem)]);
        };
        let dir = &at.path;
        let place = format!("{} ({})", dir.display(), at.from);
        if !dir.is_dir() {
            return (None, vec![missing(format!("{place} is not a folder"))]);
        }
        let mut out = vec![];
        for (what, list) in [
            ("headers", &self.headers),
            ("libraries", &self.libraries),
            ("files", &self.files),
        ] {
            let absent: Vec<&String> = list.iter().filter(|f| !dir.join(f).is_file()).collect();
            if !absent.is_empty() {
                out.push(missing(format!(
                    "{what} missing in {place}: {}",
                    listing(&absent)
                )));
            }
        }
        if let (Some((c, Some(cc))), false) = (&compiler, self.system_headers.is_empty()) {
            let absent: Vec<&String> = self
                .system_headers
                .iter()
                .filter(|h| !compiler_finds(cc, h, &dir.join("include")))
                .collect();
            if !absent.is_empty() {
                out.push(missing(format!(
                    "`{c}` finds no C library header ({}), neither in its own sysroot nor in {}/include",
                    listing(&absent),
                    dir.display()
                )));
            }
        }
        if let Some(v) = &self.version {
            if let Some(problem) = v.problem(dir, &place) {
                out.push(missing(problem));
            }
        }
        let usable = out.is_empty().then_some(at);
        (usable, out)
    }

    /// The SDK's folder: the environment or a `[toolchains]` table, else the
    /// port's default (which may need the compiler's sysroot).
    fn locate(&self, tc: &Resolved, compiler: Option<&(&str, Option<PathBuf>)>) -> Option<Setting> {
        if let Some(s) = &tc.sdk {
            return Some(s.clone());
        }
        let default = self.default.as_deref()?;
        if !default.contains("{sysroot}") {
            return Some(Setting {
                path: default.into(),
                from: "the port's default".into(),
            });
        }
        let (c, Some(cc)) = compiler? else {
            return None;
        };
        let sysroot = sysroot_of(cc)?;
        Some(Setting {
            path: default.replace("{sysroot}", &sysroot).into(),
            from: format!(
                "{} unset, so where the port's build looks: `{c} -print-sysroot`{}",
                self.env,
                default.replace("{sysroot}", "")
            ),
        })
    }
}

fn listing(files: &[&String]) -> String {
    let mut s = files
        .iter()
        .take(LISTED)
        .map(|f| f.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    if files.len() > LISTED {
        s.push_str(&format!(" (and {} more)", files.len() - LISTED));
    }
    s
}

/// What `compiler -print-sysroot` prints (empty for a compiler without
/// one, as MicroPython's Makefile then gets too).
fn sysroot_of(compiler: &Path) -> Option<String> {
    let out = Command::new(compiler)
        .arg("-print-sysroot")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Whether `compiler` preprocesses `#include <header>` with `-I include`.
fn compiler_finds(compiler: &Path, header: &str, include: &Path) -> bool {
    use std::io::Write;
    let child = Command::new(compiler)
        .args(["-E", "-x", "c", "-o", "/dev/null"])
        .arg("-I")
        .arg(include)
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else {
        return false;
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = writeln!(stdin, "#include <{header}>");
    }
    child.wait().is_ok_and(|s| s.success())
}

impl SdkVersion {
    /// Why the SDK at `dir` does not fit, if it does not.
    fn problem(&self, dir: &Path, place: &str) -> Option<String> {
        let supported = self
            .supported
            .iter()
            .map(|v| format!("v{v}"))
            .collect::<Vec<_>>()
            .join(", ");
        let Some(found) = read_version(&dir.join(&self.file)) else {
            return Some(format!(
                "cannot tell its version at {place}: {} is missing or names none (supported: {supported})",
                self.file
            ));
        };
        let fits = self.supported.iter().any(|s| {
            let want: Vec<u32> = s.split('.').filter_map(|p| p.parse().ok()).collect();
            found.starts_with(&want)
        });
        let shown = found
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(".");
        (!fits).then(|| {
            format!("v{shown} at {place} is not a version the port supports ({supported})")
        })
    }
}

/// `[major, minor, patch]` from `#define …_VERSION_MAJOR 5` lines.
fn read_version(header: &Path) -> Option<Vec<u32>> {
    let text = std::fs::read_to_string(header).ok()?;
    let part = |suffix: &str| {
        text.lines().find_map(|l| {
            let mut words = l.split_whitespace();
            (words.next()? == "#define" && words.next()?.ends_with(suffix))
                .then(|| words.next()?.parse::<u32>().ok())
                .flatten()
        })
    };
    Some(vec![
        part("_VERSION_MAJOR")?,
        part("_VERSION_MINOR")?,
        part("_VERSION_PATCH").unwrap_or(0),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idf(dir: &Path, version: (u32, u32, u32)) {
        let h = dir.join("components/esp_common/include");
        std::fs::create_dir_all(&h).unwrap();
        std::fs::write(
            h.join("esp_idf_version.h"),
            format!(
                "#pragma once\n#define ESP_IDF_VERSION_MAJOR   {}\n#define ESP_IDF_VERSION_MINOR   {}\n#define ESP_IDF_VERSION_PATCH   {}\n",
                version.0, version.1, version.2
            ),
        )
        .unwrap();
    }

    #[test]
    fn a_minor_version_matches_its_patches_and_nothing_else() {
        let v = SdkVersion {
            file: "components/esp_common/include/esp_idf_version.h".into(),
            supported: vec!["5.2".into(), "5.4".into()],
        };
        let d = tempfile::tempdir().unwrap();
        idf(d.path(), (5, 2, 2));
        assert_eq!(v.problem(d.path(), "X"), None);
        idf(d.path(), (5, 1, 4));
        assert_eq!(
            v.problem(d.path(), "X").unwrap(),
            "v5.1.4 at X is not a version the port supports (v5.2, v5.4)"
        );
    }

    #[test]
    fn long_lists_are_cut() {
        let files: Vec<String> = (1..=6).map(|i| format!("f{i}")).collect();
        let refs: Vec<&String> = files.iter().collect();
        assert_eq!(listing(&refs), "f1, f2, f3, f4 (and 2 more)");
    }
}
