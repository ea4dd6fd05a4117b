//! Boards: one declarative TOML file per board (`boards/NAME.toml`).
//!
//! The files in the repository's `boards/` folder are embedded in the
//! binary; a project's own `boards/NAME.toml` replaces the embedded board of
//! the same name (or adds a new one). `boards/README.md` documents every
//! field.

pub use crate::sdk::Sdk;
use crate::toolchains::Resolved;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// One board: which MicroPython port to build, with which toolchain, how
/// to flash the result and which link a node on it uses by default.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Board {
    /// The board's name (the file stem: `unix`, `esp8266`, …).
    pub name: String,
    /// One line for humans (`moat boards`).
    pub description: String,
    /// The MicroPython port, i.e. the folder under `ports/` (`unix`,
    /// `esp8266`, `esp32`, `rp2`, `qemu`).
    pub port: String,
    /// `BOARD=` for the port's build, when the port has boards.
    pub board: Option<String>,
    /// `VARIANT=` for the port's build, when the port has variants.
    pub variant: Option<String>,
    /// How the port is built.
    pub build: BuildSystem,
    /// Extra variables for the port's build (`make VAR=value`, or
    /// `-DVAR=value` for cmake), in name order.
    pub vars: BTreeMap<String, String>,
    /// Commands that must be on `PATH` to build, each with an install hint.
    pub toolchain: Vec<Tool>,
    /// Extra source trees the port needs inside the MicroPython tree
    /// (e.g. `lib/pico-sdk` for rp2).
    pub sources: Vec<Source>,
    /// The vendor SDK the port builds against (ESP8266 NONOS SDK,
    /// ESP-IDF), checked before the build.
    pub sdk: Option<Sdk>,
    /// How firmware gets onto the device.
    pub flash: Flash,
    /// The files the build produces, relative to the port's build folder
    /// (`ports/PORT/BUILD`), with flash offsets where they matter.
    pub firmware: Vec<Artefact>,
    /// The link kind a node on this board uses when its manifest entry
    /// names none.
    pub link: LinkKind,
    /// RAM budget in KiB (heap the runtime and apps may count on).
    pub ram_kb: u32,
    /// Flash budget in KiB (firmware size limit).
    pub flash_kb: u32,
    /// How to start the firmware on the host (only boards with
    /// `flash.method = "local"`, i.e. `unix`).
    pub run: Option<Run>,
    /// Where this definition came from.
    pub origin: Origin,
}

/// Build system of a MicroPython port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BuildSystem {
    /// `make -C ports/PORT BOARD=… VAR=…`.
    Make,
    /// The port's CMake build (esp32 through ESP-IDF's `idf.py`, rp2).
    Cmake,
}

/// A command the build needs on `PATH`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tool {
    /// The executable's name, probed on `PATH`.
    pub command: String,
    /// What to do when it is missing (shown verbatim).
    pub hint: String,
}

/// An extra source tree a port needs inside the MicroPython tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// Short name (`pico-sdk`, `tinyusb`, `mbedtls`).
    pub name: String,
    /// Folder relative to the MicroPython tree's root (`lib/pico-sdk`).
    pub dir: String,
    /// Where it comes from / how to get it, shown when it is missing.
    pub hint: String,
}

/// How firmware is written to a device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Flash {
    /// Nothing to flash: the firmware runs on this machine (`run`).
    Local,
    /// espflash (ESP32 family) for the named chip (`esp32`, `esp32c3`, …).
    Espflash { chip: String },
    /// The ESP8266 ROM loader protocol (espflash dropped the ESP8266).
    Esp8266Rom,
    /// Copy a UF2 image onto the board's USB mass-storage drive.
    Uf2 {
        /// Volume label of the bootloader drive (`RPI-RP2`).
        volume: String,
        /// UF2 family id (RP2040: 0xe48bff56).
        family: u32,
    },
    /// probe-rs over a debug probe, for the named target chip.
    ProbeRs { chip: String },
}

impl Flash {
    /// The method's name as written in board files.
    pub fn method(&self) -> &'static str {
        match self {
            Flash::Local => "local",
            Flash::Espflash { .. } => "espflash",
            Flash::Esp8266Rom => "esp8266-rom",
            Flash::Uf2 { .. } => "uf2",
            Flash::ProbeRs { .. } => "probe-rs",
        }
    }
}

/// One file of the firmware.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artefact {
    /// Path relative to the port's build folder (`firmware.bin`,
    /// `bootloader/bootloader.bin`, `micropython`).
    pub path: String,
    /// Flash address, for images written at an offset (ESP32: bootloader
    /// at 0x1000, partition table at 0x8000, app at 0x10000).
    #[serde(default)]
    pub offset: Option<u32>,
}

/// How a `local` board's firmware is started.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Run {
    /// Argument vector; `{firmware}` becomes the firmware's path,
    /// `{heap_kb}` the heap size, `{port}` the node's TCP port (emulators).
    /// Run with the node's folder as cwd.
    pub command: Vec<String>,
    /// Heap size in KiB handed to the firmware (`-X heapsize=…k`).
    pub heap_kb: u32,
}

impl Run {
    /// The argument vector for `firmware` (placeholders filled in):
    /// `{firmware}`, `{heap_kb}`, plus `extra` pairs such as
    /// `("port", "27587")`.
    pub fn argv(&self, firmware: &Path, extra: &[(&str, &str)]) -> Vec<String> {
        let fw = firmware.display().to_string();
        let heap = self.heap_kb.to_string();
        self.command
            .iter()
            .map(|a| {
                let mut a = a.replace("{firmware}", &fw).replace("{heap_kb}", &heap);
                for (k, v) in extra {
                    a = a.replace(&format!("{{{k}}}"), v);
                }
                a
            })
            .collect()
    }
}

/// The kinds of link between the host and a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkKind {
    /// TCP: the node listens, the host connects.
    Tcp,
    /// The node is a child process of the host (unix board); its stdio is
    /// the link.
    Process,
    /// A UART: SerialPacker frames plus the reliable layer.
    Serial,
    /// USB CDC: a lossless byte stream (the board's REPL stdio).
    Usb,
}

impl LinkKind {
    /// Every kind, in the order error messages list them.
    pub const ALL: [LinkKind; 4] = [
        LinkKind::Tcp,
        LinkKind::Process,
        LinkKind::Serial,
        LinkKind::Usb,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LinkKind::Tcp => "tcp",
            LinkKind::Process => "process",
            LinkKind::Serial => "serial",
            LinkKind::Usb => "usb",
        }
    }

    pub fn parse(s: &str) -> Option<LinkKind> {
        LinkKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for LinkKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a board definition was read from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "path")]
pub enum Origin {
    /// Compiled into the `moat` binary.
    Embedded,
    /// A project's `boards/NAME.toml` (replaces an embedded board of the
    /// same name).
    Project(PathBuf),
}

/// Something a board needs that this machine lacks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Missing {
    /// A toolchain command is not on `PATH` (nor in the configured
    /// folders, `looked`, searched first).
    Tool {
        name: String,
        hint: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        looked: Vec<String>,
    },
    /// A source tree is absent from the MicroPython tree.
    Source {
        name: String,
        dir: String,
        hint: String,
    },
    /// A piece of the board's SDK (its folder, headers, libraries, tools,
    /// version): `problem` says which and where moat looked.
    Sdk {
        name: String,
        problem: String,
        hint: String,
    },
}

impl Missing {
    /// What is missing, in a word or two (`moat boards` summary).
    pub fn name(&self) -> &str {
        match self {
            Missing::Tool { name, .. }
            | Missing::Source { name, .. }
            | Missing::Sdk { name, .. } => name,
        }
    }
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Missing::Tool { name, hint, looked } if looked.is_empty() => {
                write!(f, "`{name}` not found on PATH: {hint}")
            }
            Missing::Tool { name, hint, looked } => write!(
                f,
                "`{name}` not found in {} nor on PATH: {hint}",
                looked.join(", ")
            ),
            Missing::Sdk {
                name,
                problem,
                hint,
            } => write!(f, "{name}: {problem}; {hint}"),
            Missing::Source { name, dir, hint } => {
                write!(f, "source `{name}` missing (expected at {dir}): {hint}")
            }
        }
    }
}

/// All boards known to a project: the embedded ones plus the project's own,
/// in name order.
#[derive(Clone, Debug, Default)]
pub struct Boards {
    boards: BTreeMap<String, Board>,
}

/// A board file that could not be read or is invalid.
#[derive(Debug, thiserror::Error)]
pub enum BoardError {
    #[error("{file}: cannot read board file: {source}")]
    Io {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `message` already carries `line:column` and the key where known.
    #[error("{file}:{message}")]
    Invalid { file: String, message: String },
}

/// The board files shipped with moat, compiled in.
const EMBEDDED: &[(&str, &str)] = &[
    ("esp32", include_str!("../../boards/esp32.toml")),
    ("esp8266", include_str!("../../boards/esp8266.toml")),
    ("qemu-mps2", include_str!("../../boards/qemu-mps2.toml")),
    ("rpi-pico", include_str!("../../boards/rpi-pico.toml")),
    ("unix", include_str!("../../boards/unix.toml")),
];

/// A board file as written (before defaults and checks).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BoardFile {
    description: String,
    port: String,
    #[serde(default)]
    board: Option<String>,
    #[serde(default)]
    variant: Option<String>,
    build: BuildSystem,
    #[serde(default)]
    vars: BTreeMap<String, String>,
    #[serde(default)]
    toolchain: Vec<Tool>,
    #[serde(default)]
    sources: Vec<Source>,
    #[serde(default)]
    sdk: Option<Sdk>,
    flash: Flash,
    firmware: Vec<Artefact>,
    link: LinkKind,
    ram_kb: u32,
    flash_kb: u32,
    #[serde(default)]
    run: Option<Run>,
}

impl Board {
    /// Parses one board file's text. `file` names it in error messages.
    pub fn parse(name: &str, text: &str, file: &str, origin: Origin) -> Result<Board, BoardError> {
        let f: BoardFile = toml::from_str(text).map_err(|e| BoardError::Invalid {
            file: file.to_owned(),
            message: match e.span() {
                Some(span) => {
                    let (line, col) = crate::manifest::line_col(text, span.start);
                    format!("{line}:{col}: {}", e.message())
                }
                None => format!(" {}", e.message()),
            },
        })?;
        let invalid = |message: String| BoardError::Invalid {
            file: file.to_owned(),
            message: format!(" {message}"),
        };
        if f.firmware.is_empty() {
            return Err(invalid("`firmware` lists no artefact".into()));
        }
        match (&f.flash, &f.run) {
            (Flash::Local, None) => {
                return Err(invalid(
                    "flash method `local` needs a `[run]` table (command, heap_kb)".into(),
                ))
            }
            (Flash::Local, Some(_)) | (_, None) => {}
            (other, Some(_)) => {
                return Err(invalid(format!(
                    "`[run]` is only valid with flash method `local`, not `{}`",
                    other.method()
                )))
            }
        }
        // A chip probe-rs does not know fails now, not at `moat flash`.
        // Without the feature nothing can flash it, which `moat flash` says.
        #[cfg(feature = "probe-rs")]
        if let Flash::ProbeRs { chip } = &f.flash {
            crate::flash::probe::check_chip(chip).map_err(|why| BoardError::Invalid {
                file: file.to_owned(),
                message: match value_span(text, "flash", "chip") {
                    Some(at) => {
                        let (line, col) = crate::manifest::line_col(text, at);
                        format!("{line}:{col}: {why}")
                    }
                    None => format!(" {why}"),
                },
            })?;
        }
        Ok(Board {
            name: name.to_owned(),
            description: f.description,
            port: f.port,
            board: f.board,
            variant: f.variant,
            build: f.build,
            vars: f.vars,
            toolchain: f.toolchain,
            sources: f.sources,
            sdk: f.sdk,
            flash: f.flash,
            firmware: f.firmware,
            link: f.link,
            ram_kb: f.ram_kb,
            flash_kb: f.flash_kb,
            run: f.run,
            origin,
        })
    }

    /// The port's build folder name, relative to `ports/PORT`
    /// (`build-standard`, `build-ESP8266_GENERIC`, …), as MicroPython's own
    /// Makefiles name it.
    pub fn default_build_dir(&self) -> String {
        match (&self.board, &self.variant) {
            (Some(b), Some(v)) => format!("build-{b}-{v}"),
            (Some(b), None) => format!("build-{b}"),
            (None, Some(v)) => format!("build-{v}"),
            (None, None) => "build".to_owned(),
        }
    }

    /// What this machine lacks to build the board: toolchain commands not
    /// in the configured folders nor on `PATH`, pieces of its SDK, and
    /// (when `micropython` names a source tree) extra sources absent from
    /// it. Empty means buildable here.
    pub fn missing(&self, micropython: Option<&Path>, tc: &Resolved) -> Vec<Missing> {
        self.check(micropython, tc).1
    }

    /// [`Board::missing`], plus the SDK's folder when it is usable (the
    /// build hands it to the port).
    pub fn check(
        &self,
        micropython: Option<&Path>,
        tc: &Resolved,
    ) -> (Option<crate::toolchains::Setting>, Vec<Missing>) {
        let mut out: Vec<Missing> = self
            .toolchain
            .iter()
            .filter(|t| tc.find(&t.command).is_none())
            .map(|t| Missing::Tool {
                name: t.command.clone(),
                hint: t.hint.clone(),
                looked: tc.bin_shown(),
            })
            .collect();
        let sdk_dir = match &self.sdk {
            Some(sdk) => {
                let (dir, missing) = sdk.check(tc);
                out.extend(missing);
                dir
            }
            None => None,
        };
        if let Some(root) = micropython {
            out.extend(
                self.sources
                    .iter()
                    .filter(|s| !dir_has_entries(&root.join(&s.dir)))
                    .map(|s| Missing::Source {
                        name: s.name.clone(),
                        dir: s.dir.clone(),
                        hint: s.hint.clone(),
                    }),
            );
        }
        (sdk_dir, out)
    }
}

/// Where the value of `table.key` starts in a board file's text.
#[cfg(feature = "probe-rs")]
fn value_span(text: &str, table: &str, key: &str) -> Option<usize> {
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    let item = doc.get(table)?.as_table_like()?.get(key)?;
    item.span().map(|s| s.start)
}

fn dir_has_entries(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false)
}

/// The first executable called `command` on `PATH` (or `command` itself
/// when it contains a slash and exists).
pub fn find_on_path(command: &str) -> Option<PathBuf> {
    if command.contains('/') {
        let p = PathBuf::from(command);
        return is_executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(command))
        .find(|p| is_executable(p))
}

pub(crate) fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

impl Boards {
    /// The boards compiled into the binary.
    pub fn embedded() -> Boards {
        let mut boards = BTreeMap::new();
        for (name, text) in EMBEDDED {
            // The embedded files are checked by a unit test; a broken one is
            // a bug in moat, not in the user's input.
            let b = Board::parse(
                name,
                text,
                &format!("boards/{name}.toml (embedded)"),
                Origin::Embedded,
            )
            .expect("embedded board files are valid");
            boards.insert((*name).to_owned(), b);
        }
        Boards { boards }
    }

    /// The embedded boards overlaid with `PROJECT/boards/*.toml` (a project
    /// file replaces the embedded board of the same name).
    pub fn load(project_root: &Path) -> Result<Boards, BoardError> {
        let mut boards = Boards::embedded();
        let dir = project_root.join("boards");
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(boards),
            Err(source) => return Err(BoardError::Io { file: dir, source }),
        };
        let mut files: Vec<PathBuf> = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| BoardError::Io {
                file: dir.clone(),
                source,
            })?;
            let p = entry.path();
            if p.extension().is_some_and(|e| e == "toml") {
                files.push(p);
            }
        }
        files.sort();
        for file in files {
            let Some(name) = file.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            let text = std::fs::read_to_string(&file).map_err(|source| BoardError::Io {
                file: file.clone(),
                source,
            })?;
            let shown = file.display().to_string();
            let b = Board::parse(name, &text, &shown, Origin::Project(file.clone()))?;
            boards.boards.insert(name.to_owned(), b);
        }
        Ok(boards)
    }

    pub fn get(&self, name: &str) -> Option<&Board> {
        self.boards.get(name)
    }

    /// Board names in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.boards.keys().map(String::as_str)
    }

    /// Boards in name order.
    pub fn iter(&self) -> impl Iterator<Item = &Board> {
        self.boards.values()
    }

    pub fn len(&self) -> usize {
        self.boards.len()
    }

    pub fn is_empty(&self) -> bool {
        self.boards.is_empty()
    }

    /// Adds or replaces a board (tests, generated boards).
    pub fn insert(&mut self, board: Board) {
        self.boards.insert(board.name.clone(), board);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_five_embedded_boards_parse() {
        let boards = Boards::embedded();
        let names: Vec<&str> = boards.names().collect();
        assert_eq!(names, ["esp32", "esp8266", "qemu-mps2", "rpi-pico", "unix"]);
        let unix = boards.get("unix").unwrap();
        assert_eq!(unix.port, "unix");
        assert_eq!(unix.link, LinkKind::Tcp);
        assert_eq!(unix.default_build_dir(), "build-standard");
        assert_eq!(
            unix.vars.get("MICROPY_PY_FFI").map(String::as_str),
            Some("0")
        );
        let esp = boards.get("esp8266").unwrap();
        assert_eq!(esp.board.as_deref(), Some("ESP8266_GENERIC"));
        assert_eq!(esp.flash, Flash::Esp8266Rom);
        assert_eq!(
            boards.get("esp32").unwrap().flash,
            Flash::Espflash {
                chip: "esp32".into()
            }
        );
    }

    #[test]
    fn unix_run_command_fills_firmware_and_heap() {
        let unix = Boards::embedded().get("unix").cloned().unwrap();
        let argv = unix.run.unwrap().argv(Path::new("/fw/micropython"), &[]);
        assert_eq!(
            argv,
            ["/fw/micropython", "-X", "heapsize=256k", "-m", "main"]
        );
    }

    #[test]
    fn project_board_file_replaces_the_embedded_one() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("boards")).unwrap();
        let text = include_str!("../../boards/unix.toml").replace("ram_kb = 256", "ram_kb = 64");
        std::fs::write(dir.path().join("boards/unix.toml"), text).unwrap();
        std::fs::write(
            dir.path().join("boards/mine.toml"),
            include_str!("../../boards/esp8266.toml"),
        )
        .unwrap();
        let boards = Boards::load(dir.path()).unwrap();
        let unix = boards.get("unix").unwrap();
        assert_eq!(unix.ram_kb, 64);
        assert!(matches!(unix.origin, Origin::Project(_)));
        assert_eq!(boards.len(), 6);
        assert_eq!(boards.get("esp32").unwrap().origin, Origin::Embedded);
    }

    #[test]
    fn bad_board_file_is_reported_with_file_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("boards")).unwrap();
        let text = format!("colour = 1\n{}", include_str!("../../boards/unix.toml"));
        std::fs::write(dir.path().join("boards/unix.toml"), text).unwrap();
        let e = Boards::load(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("boards/unix.toml:1:1: unknown field `colour`"),
            "{e}"
        );
        assert!(e.contains("`description`"), "{e}");
    }

    /// A board file flashed by probe-rs for `chip`.
    fn probe_rs_board(chip: &str) -> String {
        let text = include_str!("../../boards/rpi-pico.toml").replace(
            "method = \"uf2\"\nvolume = \"RPI-RP2\"\nfamily = 0xe48bff56",
            &format!("method = \"probe-rs\"\nchip = \"{chip}\""),
        );
        assert!(
            text.contains("probe-rs"),
            "rpi-pico.toml changed: adapt this test"
        );
        text
    }

    #[cfg(feature = "probe-rs")]
    #[test]
    fn an_unknown_probe_rs_chip_fails_when_the_board_file_loads() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("boards")).unwrap();
        let text = probe_rs_board("RP2041");
        let line = text.lines().position(|l| l.contains("RP2041")).unwrap() + 1;
        std::fs::write(dir.path().join("boards/swd.toml"), text).unwrap();
        let e = Boards::load(dir.path()).unwrap_err().to_string();
        // the file and the line, the bad name, a close match and the fix
        assert!(e.contains(&format!("boards/swd.toml:{line}:")), "{e}");
        assert!(e.contains("`RP2041`"), "{e}");
        assert!(e.contains("did you mean `RP2040`"), "{e}");
        assert!(e.contains("fix `chip` in the board file"), "{e}");
    }

    #[cfg(feature = "probe-rs")]
    #[test]
    fn a_known_probe_rs_chip_loads() {
        let b = Board::parse(
            "swd",
            &probe_rs_board("STM32F411RETx"),
            "swd.toml",
            Origin::Embedded,
        )
        .unwrap();
        assert_eq!(
            b.flash,
            Flash::ProbeRs {
                chip: "STM32F411RETx".into()
            }
        );
    }

    #[cfg(not(feature = "probe-rs"))]
    #[test]
    fn without_probe_rs_the_chip_is_not_checked() {
        let b = Board::parse(
            "swd",
            &probe_rs_board("RP2041"),
            "swd.toml",
            Origin::Embedded,
        );
        assert!(b.is_ok(), "{b:?}");
    }

    #[test]
    fn missing_toolchain_commands_are_named_with_their_hint() {
        let mut b = Boards::embedded().get("esp8266").cloned().unwrap();
        b.toolchain = vec![
            Tool {
                command: "moat-test-no-such-compiler".into(),
                hint: "install it".into(),
            },
            Tool {
                command: "sh".into(),
                hint: "".into(),
            },
        ];
        assert_eq!(
            b.missing(None, &Resolved::path_only())
                .into_iter()
                .filter(|m| matches!(m, Missing::Tool { .. }))
                .collect::<Vec<_>>(),
            [Missing::Tool {
                name: "moat-test-no-such-compiler".into(),
                hint: "install it".into(),
                looked: vec![],
            }]
        );
    }

    #[test]
    fn missing_sources_are_checked_in_the_micropython_tree() {
        let b = Boards::embedded().get("rpi-pico").cloned().unwrap();
        let tree = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tree.path().join("lib/pico-sdk")).unwrap();
        std::fs::write(tree.path().join("lib/pico-sdk/README.md"), "").unwrap();
        let missing: Vec<String> = b
            .missing(Some(tree.path()), &Resolved::path_only())
            .into_iter()
            .filter_map(|m| match m {
                Missing::Source { name, .. } => Some(name),
                _ => None,
            })
            .collect();
        assert_eq!(missing, ["tinyusb", "mbedtls"]);
    }
}
