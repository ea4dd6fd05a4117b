//! Where a board's toolchain lives when it is not simply on `PATH`.
//!
//! Three sources, the first that says something wins (per setting):
//!
//! 1. the environment: the board's SDK variable (`[sdk] env` in its board
//!    file: `ESP_SDK`, `IDF_PATH`) and `MOAT_TOOLCHAIN_PATH` (folders
//!    searched before `PATH` for every board's toolchain commands);
//! 2. the project's `moat.toml`, table `[toolchains.NAME]`;
//! 3. the user's `$XDG_CONFIG_HOME/moat/toolchains.toml` (else
//!    `~/.config/moat/toolchains.toml`), the same `[toolchains.NAME]` tables.
//!
//! `NAME` is the board's name or its MicroPython port (`esp8266`, `esp32`,
//! `rp2`); the board's name wins. Each table has `sdk` (the SDK's folder)
//! and `bin` (a folder or a list of folders holding compilers). Relative
//! paths are relative to the file's folder; `~/` is the home folder.
//!
//! ```toml
//! [toolchains.esp8266]
//! bin = "~/esp-open-sdk/xtensa-lx106-elf/bin"
//! sdk = "~/esp-open-sdk/sdk"         # else the compiler's sysroot/usr
//! [toolchains.esp32]
//! sdk = "~/esp/esp-idf"              # IDF_PATH
//! bin = "~/.espressif/tools/xtensa-esp-elf/esp-13.2.0_20240530/xtensa-esp-elf/bin"
//! ```

use crate::board::Board;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `moat build --help` and `moat boards --help`: where toolchains are
/// looked for.
pub const HELP: &str = "\
Toolchains not on PATH: a [toolchains.BOARD] table (or [toolchains.PORT]) in
moat.toml or in ~/.config/moat/toolchains.toml ($XDG_CONFIG_HOME honoured):
    [toolchains.esp8266]
    bin = \"~/esp-open-sdk/xtensa-lx106-elf/bin\"   # searched before PATH
    sdk = \"~/esp-open-sdk/sdk\"                    # the SDK's folder (ESP_SDK)
    [toolchains.esp32]
    sdk = \"~/esp/esp-idf\"                         # IDF_PATH
The environment wins over both files: the board's SDK variable (ESP_SDK,
IDF_PATH) and MOAT_TOOLCHAIN_PATH (folders searched before PATH for every
board). Before make, moat checks the compiler and the SDK (headers,
libraries, tools, version) and names each missing piece with where it
looked; `moat boards` shows the same.";

/// Folders searched before `PATH` for every board's toolchain commands.
pub const PATH_VAR: &str = "MOAT_TOOLCHAIN_PATH";
/// The user's file, under `$XDG_CONFIG_HOME/moat/`.
pub const USER_FILE: &str = "toolchains.toml";

/// A setting and where it came from (for messages: `ESP_SDK (environment)`,
/// `[toolchains.esp8266] sdk in moat.toml`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting {
    pub path: PathBuf,
    pub from: String,
}

/// One `[toolchains.NAME]` table, paths resolved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Entry {
    bin: Vec<PathBuf>,
    sdk: Option<PathBuf>,
}

/// One file's `[toolchains]`.
#[derive(Clone, Debug)]
struct File {
    /// As shown in messages.
    shown: String,
    entries: BTreeMap<String, Entry>,
}

/// The `[toolchains]` tables of the project and of the user.
#[derive(Clone, Debug, Default)]
pub struct Toolchains {
    /// Project file first, then the user's.
    files: Vec<File>,
    /// Where the user's file is (or would be), for messages.
    user_file: Option<PathBuf>,
}

/// A `[toolchains]` table that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("{file}{message}")]
pub struct ToolchainsError {
    pub file: String,
    /// `:line:col: message` or `: message`.
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryFile {
    #[serde(default)]
    bin: Option<Bins>,
    #[serde(default)]
    sdk: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Bins {
    One(String),
    Many(Vec<String>),
}

/// `moat.toml`: only its `[toolchains]` matters here (the manifest parser
/// checks the rest).
#[derive(Deserialize)]
struct ManifestPart {
    #[serde(default)]
    toolchains: BTreeMap<String, EntryFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserFile {
    #[serde(default)]
    toolchains: BTreeMap<String, EntryFile>,
}

/// `$XDG_CONFIG_HOME/moat/toolchains.toml`, else `~/.config/moat/…`.
pub fn user_file() -> Option<PathBuf> {
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|x| !x.is_empty()) {
        Some(x) => PathBuf::from(x),
        None => PathBuf::from(std::env::var_os("HOME").filter(|h| !h.is_empty())?).join(".config"),
    };
    Some(base.join("moat").join(USER_FILE))
}

fn expand(p: &str, base: &Path) -> PathBuf {
    if let Some(rest) = p.strip_prefix("~/") {
        if let Some(home) = std::env::var_os("HOME") {
            return PathBuf::from(home).join(rest);
        }
    }
    base.join(p)
}

fn parse_error(file: &str, text: &str, e: toml::de::Error) -> ToolchainsError {
    ToolchainsError {
        file: file.to_owned(),
        message: match e.span() {
            Some(span) => {
                let (line, col) = crate::manifest::line_col(text, span.start);
                format!(":{line}:{col}: {}", e.message().trim_end())
            }
            None => format!(": {}", e.message().trim_end()),
        },
    }
}

fn entries(tables: BTreeMap<String, EntryFile>, base: &Path) -> BTreeMap<String, Entry> {
    tables
        .into_iter()
        .map(|(name, e)| {
            let bin = match e.bin {
                None => vec![],
                Some(Bins::One(b)) => vec![expand(&b, base)],
                Some(Bins::Many(bs)) => bs.iter().map(|b| expand(b, base)).collect(),
            };
            let sdk = e.sdk.map(|s| expand(&s, base));
            (name, Entry { bin, sdk })
        })
        .collect()
}

impl Toolchains {
    /// Reads the project's `moat.toml` (when `project_root` is given) and
    /// the user's file; absent files are empty.
    pub fn load(project_root: Option<&Path>) -> Result<Toolchains, ToolchainsError> {
        let mut files = vec![];
        if let Some(root) = project_root {
            let path = root.join(crate::manifest::FILE_NAME);
            if let Ok(text) = std::fs::read_to_string(&path) {
                files.push(Self::parse_manifest(
                    &text,
                    &path.display().to_string(),
                    root,
                )?);
            }
        }
        let user = user_file();
        if let Some(path) = &user {
            if let Ok(text) = std::fs::read_to_string(path) {
                let base = path.parent().unwrap_or(Path::new("/"));
                files.push(Self::parse_user(&text, &path.display().to_string(), base)?);
            }
        }
        Ok(Toolchains {
            files,
            user_file: user,
        })
    }

    fn parse_manifest(text: &str, shown: &str, base: &Path) -> Result<File, ToolchainsError> {
        let part: ManifestPart = toml::from_str(text).map_err(|e| parse_error(shown, text, e))?;
        Ok(File {
            shown: shown.to_owned(),
            entries: entries(part.toolchains, base),
        })
    }

    fn parse_user(text: &str, shown: &str, base: &Path) -> Result<File, ToolchainsError> {
        let part: UserFile = toml::from_str(text).map_err(|e| parse_error(shown, text, e))?;
        Ok(File {
            shown: shown.to_owned(),
            entries: entries(part.toolchains, base),
        })
    }

    /// What applies to `board`.
    pub fn for_board(&self, board: &Board) -> Resolved {
        let names: Vec<&str> = if board.name == board.port {
            vec![&board.name]
        } else {
            vec![&board.name, &board.port]
        };
        let mut bin: Vec<Setting> = std::env::var_os(PATH_VAR)
            .map(|p| {
                std::env::split_paths(&p)
                    .filter(|d| !d.as_os_str().is_empty())
                    .map(|path| Setting {
                        path,
                        from: format!("{PATH_VAR} (environment)"),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let sdk_env = board.sdk.as_ref().map(|s| s.env.clone());
        let mut sdk = sdk_env.as_ref().and_then(|var| {
            std::env::var_os(var)
                .filter(|v| !v.is_empty())
                .map(|v| Setting {
                    path: PathBuf::from(v),
                    from: format!("{var} (environment)"),
                })
        });
        let mut bin_from_file = false;
        for f in &self.files {
            for name in &names {
                let Some(e) = f.entries.get(*name) else {
                    continue;
                };
                if !bin_from_file && !e.bin.is_empty() {
                    bin_from_file = true;
                    bin.extend(e.bin.iter().map(|path| Setting {
                        path: path.clone(),
                        from: format!("[toolchains.{name}] bin in {}", f.shown),
                    }));
                }
                if sdk.is_none() {
                    sdk = e.sdk.as_ref().map(|path| Setting {
                        path: path.clone(),
                        from: format!("[toolchains.{name}] sdk in {}", f.shown),
                    });
                }
            }
        }
        let user = self.user_file.as_ref().map_or_else(
            || "~/.config/moat/toolchains.toml".to_owned(),
            |p| p.display().to_string(),
        );
        Resolved {
            bin,
            sdk,
            sdk_env,
            table: format!("[toolchains.{}]", board.name),
            config_files: format!("moat.toml or {user}"),
        }
    }
}

/// A board's toolchain settings after the environment and both files.
#[derive(Clone, Debug, Default)]
pub struct Resolved {
    /// Folders searched before `PATH`, in order.
    pub bin: Vec<Setting>,
    /// The SDK's folder, when given.
    pub sdk: Option<Setting>,
    /// The board's SDK variable (`ESP_SDK`), when it has an SDK.
    pub sdk_env: Option<String>,
    /// `[toolchains.BOARD]`, for messages.
    pub table: String,
    /// Where such a table may be written, for messages.
    pub config_files: String,
}

impl Resolved {
    /// Nothing configured: `PATH` only (tests, boards without settings).
    pub fn path_only() -> Resolved {
        Resolved::default()
    }

    /// The first executable `command` in the `bin` folders, else on `PATH`.
    pub fn find(&self, command: &str) -> Option<PathBuf> {
        if !command.contains('/') {
            if let Some(p) = self
                .bin
                .iter()
                .map(|d| d.path.join(command))
                .find(|p| crate::board::is_executable(p))
            {
                return Some(p);
            }
        }
        crate::board::find_on_path(command)
    }

    /// `PATH` for the build: the `bin` folders first.
    pub fn path_env(&self) -> Option<OsString> {
        if self.bin.is_empty() {
            return None;
        }
        let old = std::env::var_os("PATH").unwrap_or_default();
        let dirs = self
            .bin
            .iter()
            .map(|s| s.path.clone())
            .chain(std::env::split_paths(&old));
        std::env::join_paths(dirs).ok()
    }

    /// Puts the settings into a build command's environment: `PATH` with
    /// the `bin` folders first, the SDK variable naming the SDK's folder.
    pub fn apply(&self, cmd: &mut Command, sdk_dir: Option<&Path>) {
        if let Some(path) = self.path_env() {
            cmd.env("PATH", path);
        }
        if let (Some(var), Some(dir)) = (&self.sdk_env, sdk_dir) {
            cmd.env(var, dir);
        }
    }

    /// `DIR (from), DIR2 (from)` of the `bin` folders.
    pub fn bin_shown(&self) -> Vec<String> {
        self.bin
            .iter()
            .map(|s| format!("{} ({})", s.path.display(), s.from))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::board::Boards;

    fn toolchains(project: &str, user: &str) -> Toolchains {
        let base = Path::new("/p");
        Toolchains {
            files: vec![
                Toolchains::parse_manifest(project, "/p/moat.toml", base).unwrap(),
                Toolchains::parse_user(user, "/u/toolchains.toml", Path::new("/u")).unwrap(),
            ],
            user_file: Some("/u/toolchains.toml".into()),
        }
    }

    #[test]
    fn project_settings_win_over_the_users_and_paths_resolve_against_their_file() {
        let t = toolchains(
            "[project]\nname = \"x\"\n[toolchains.esp8266]\nsdk = \"sdk\"\n",
            "[toolchains.esp8266]\nsdk = \"/other\"\nbin = [\"a\", \"/b\"]\n",
        );
        let board = Boards::embedded().get("esp8266").cloned().unwrap();
        let r = t.for_board(&board);
        if std::env::var_os("ESP_SDK").is_none() {
            assert_eq!(
                r.sdk,
                Some(Setting {
                    path: "/p/sdk".into(),
                    from: "[toolchains.esp8266] sdk in /p/moat.toml".into()
                })
            );
        }
        let bins: Vec<&Path> = r.bin.iter().map(|s| s.path.as_path()).collect();
        assert!(
            bins.ends_with(&[Path::new("/u/a"), Path::new("/b")]),
            "{bins:?}"
        );
    }

    #[test]
    fn the_port_name_serves_a_board_of_another_name() {
        let t = toolchains("", "[toolchains.rp2]\nbin = \"/arm/bin\"\n");
        let board = Boards::embedded().get("rpi-pico").cloned().unwrap();
        let r = t.for_board(&board);
        assert_eq!(r.bin.last().unwrap().path, Path::new("/arm/bin"));
        assert_eq!(
            r.bin.last().unwrap().from,
            "[toolchains.rp2] bin in /u/toolchains.toml"
        );
    }

    #[test]
    fn an_unknown_key_is_reported_with_file_and_line() {
        let e = Toolchains::parse_user(
            "[toolchains.esp8266]\nsdk = \"/x\"\ncompiler = \"/y\"\n",
            "/u/toolchains.toml",
            Path::new("/u"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("/u/toolchains.toml:3:1: unknown field `compiler`"),
            "{e}"
        );
    }
}
