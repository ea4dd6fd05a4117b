//! The project manifest, `moat.toml`: what a project builds and how its
//! nodes are reached.
//!
//! Parsing walks the TOML document by hand (with `toml_edit`, which keeps
//! spans) instead of going through serde, so that every error can name the
//! file, `line:column`, the dotted key and what would be valid there.
//!
//! ```toml
//! [project]
//! name = "garden"
//! [micropython]
//! version = "1.25.0"          # or: path = "…", or: git = "…", rev = "…"
//! [apps]
//! paths = ["apps"]
//! [defaults.link]             # shared by every node (node keys win)
//! timeout = 500
//! [nodes.pump]
//! board = "esp8266"
//! port = "/dev/ttyUSB0"
//! link = { kind = "serial", baud = 115200 }
//! [nodes.pump.config]         # becomes the node's moat.cfg
//! apps = { fs = "fs.Files" }
//! ```

use crate::board::{Boards, LinkKind};
use mux_runtime::Value;
use std::fmt;
use std::path::{Path, PathBuf};

/// The manifest's file name.
pub const FILE_NAME: &str = "moat.toml";
/// MicroPython version built when `[micropython]` names none.
pub const DEFAULT_MICROPYTHON_VERSION: &str = "1.25.0";
/// Default TCP port of a node's link.
pub const DEFAULT_TCP_PORT: u16 = 27587;
/// Host the host side connects to when a tcp link names none.
pub const DEFAULT_TCP_HOST: &str = "127.0.0.1";
/// Address a node's TCP server listens on.
pub const NODE_LISTEN_HOST: &str = "0.0.0.0";
/// Serial defaults (protocol.md §4).
pub const DEFAULT_BAUD: u32 = 115_200;
pub const DEFAULT_SERIAL_MAX: u32 = 255;
pub const DEFAULT_SERIAL_TIMEOUT_MS: u32 = 1000;
pub const DEFAULT_SERIAL_WINDOW: u32 = 8;
pub const DEFAULT_SERIAL_RETRIES: u32 = 5;

/// A parsed and validated `moat.toml`.
#[derive(Clone, Debug, PartialEq)]
pub struct Manifest {
    /// `[project]`.
    pub project: Project,
    /// `[micropython]`: which MicroPython tree to build against.
    pub micropython: MicroPython,
    /// `[apps] paths`: folders with the project's own MicroPython modules,
    /// relative to the project root, in the order given.
    pub app_paths: Vec<PathBuf>,
    /// `[nodes.NAME]` in file order.
    pub nodes: Vec<Node>,
}

/// `[project]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Project {
    /// The project's name (letters, digits, `-`, `_`).
    pub name: String,
}

/// Where the MicroPython source comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MicroPython {
    /// A released version, fetched and cached by moat (`version = "1.25.0"`).
    Version(String),
    /// A local tree (`path = "…"`), relative paths resolved against the
    /// project root.
    Path(PathBuf),
    /// A git repository at a revision (`git = "…", rev = "…"`).
    Git { url: String, rev: String },
}

/// One `[nodes.NAME]`: a device (or host process) running the node runtime.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// The node's name (the table key).
    pub name: String,
    /// The board name; guaranteed to exist in the project's [`Boards`].
    pub board: String,
    /// Device path used for flashing and for serial/usb links.
    pub port: Option<String>,
    /// How the host reaches the node (defaults and board default applied).
    pub link: Link,
    /// `[nodes.NAME.config]` converted to a value, keys in file order;
    /// `Value::Map(vec![])` when absent. Does not yet include the derived
    /// `link` section: see [`Node::config`].
    pub user_config: Value,
}

/// How the host talks to a node, with every default filled in.
#[derive(Clone, Debug, PartialEq)]
pub enum Link {
    /// The node runs a TCP server on `port`; the host connects to
    /// `host:port`.
    Tcp { host: String, port: u16 },
    /// The node is a child process of the host; its stdin/stdout is the
    /// link (unix board only).
    Process,
    /// A UART with SerialPacker framing and the reliable layer.
    Serial(SerialLink),
    /// USB CDC: a lossless byte stream on the node's REPL stdio.
    Usb,
}

/// Settings of a serial link (protocol.md §4).
#[derive(Clone, Debug, PartialEq)]
pub struct SerialLink {
    /// Baud rate (default 115200).
    pub baud: u32,
    /// Maximum frame payload in bytes (default 255: one-byte lengths).
    pub max: u32,
    /// Reliable layer: retransmit timeout in ms (default 1000).
    pub timeout_ms: u32,
    /// Reliable layer: sequence window (default 8, minimum 4).
    pub window: u32,
    /// Reliable layer: retransmissions before the link is down (default 5).
    pub retries: u32,
    /// Node-side extras passed through into the node's `link.uart` config
    /// (e.g. `n`: UART number, `tx`/`rx`: pins), in file order.
    pub extra: Vec<(String, Value)>,
}

impl Link {
    pub fn kind(&self) -> LinkKind {
        match self {
            Link::Tcp { .. } => LinkKind::Tcp,
            Link::Process => LinkKind::Process,
            Link::Serial(_) => LinkKind::Serial,
            Link::Usb => LinkKind::Usb,
        }
    }

    /// The node's side of this link, as it goes into the node's config
    /// under `link`: tcp → `{tcp: {h: "0.0.0.0", p: PORT}}`, process and
    /// usb → `{stdio: {}}`, serial → `{uart: {b, m, t, w, r, …extra}}`.
    pub fn node_side(&self) -> Value {
        match self {
            Link::Tcp { port, .. } => Value::map([(
                "tcp",
                Value::map([
                    ("h", Value::from(NODE_LISTEN_HOST)),
                    ("p", Value::from(*port)),
                ]),
            )]),
            Link::Process | Link::Usb => Value::map([("stdio", Value::Map(vec![]))]),
            Link::Serial(s) => {
                let mut uart = vec![
                    ("b".to_owned(), Value::from(s.baud)),
                    ("m".to_owned(), Value::from(s.max)),
                    ("t".to_owned(), Value::from(s.timeout_ms)),
                    ("w".to_owned(), Value::from(s.window)),
                    ("r".to_owned(), Value::from(s.retries)),
                ];
                uart.extend(s.extra.iter().cloned());
                Value::map([("uart", Value::map(uart))])
            }
        }
    }
}

impl Node {
    /// The node's complete config (its `moat.cfg`): the user's
    /// `[nodes.NAME.config]` plus the `link` section derived from
    /// [`Node::link`]. A `link` table the user wrote is merged over the
    /// derived one (user keys win, maps merge recursively).
    pub fn config(&self) -> Value {
        let mut cfg = self.user_config.clone();
        let derived = self.link.node_side();
        let Value::Map(pairs) = &mut cfg else {
            return cfg;
        };
        match pairs.iter_mut().find(|(k, _)| k.as_str() == Some("link")) {
            Some((_, user)) => {
                let mut merged = derived;
                merge_into(&mut merged, user.clone());
                *user = merged;
            }
            None => pairs.push((Value::from("link"), derived)),
        }
        cfg
    }
}

/// Merges `over` into `base`: maps merge key by key (recursively), anything
/// else replaces.
fn merge_into(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Map(b), Value::Map(o)) => {
            for (k, v) in o {
                match b.iter_mut().find(|(bk, _)| *bk == k) {
                    Some((_, bv)) => merge_into(bv, v),
                    None => b.push((k, v)),
                }
            }
        }
        (b, o) => *b = o,
    }
}

impl Manifest {
    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The complete config (`moat.cfg` content) of node `name`.
    pub fn node_config(&self, name: &str) -> Option<Value> {
        self.node(name).map(Node::config)
    }
}

/// An invalid manifest: where, which key, what is wrong and what would be
/// valid. Displays as `FILE:LINE:COL: KEY: MESSAGE`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ManifestError {
    /// The file as shown to the user.
    pub file: String,
    /// 1-based line and column, when the problem has a place.
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// Dotted key path (`nodes.pump.board`); empty for document-level
    /// problems.
    pub key: String,
    /// What is wrong and what would be valid.
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let (Some(l), Some(c)) = (self.line, self.column) {
            write!(f, ":{l}:{c}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// 1-based line and column (in characters) of byte offset `pos` in `text`.
pub fn line_col(text: &str, pos: usize) -> (usize, usize) {
    let pos = pos.min(text.len());
    let before = &text[..text.floor_char_boundary_compat(pos)];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

trait FloorCharBoundary {
    fn floor_char_boundary_compat(&self, i: usize) -> usize;
}

impl FloorCharBoundary for str {
    fn floor_char_boundary_compat(&self, mut i: usize) -> usize {
        while i > 0 && !self.is_char_boundary(i) {
            i -= 1;
        }
        i
    }
}

/// Parses a manifest's text. `file` names it in errors; `boards` are the
/// boards nodes may use.
pub fn parse(text: &str, file: &str, boards: &Boards) -> Result<Manifest, ManifestError> {
    let _ = (text, boards);
    Err(ManifestError {
        file: file.to_owned(),
        line: None,
        column: None,
        key: String::new(),
        message: "manifest parsing is not implemented yet".into(),
    })
}

/// Reads and parses `path`.
pub fn load(path: &Path, boards: &Boards) -> Result<Manifest, ManifestError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ManifestError {
        file: shown.clone(),
        line: None,
        column: None,
        key: String::new(),
        message: format!("cannot read the manifest: {e}"),
    })?;
    parse(&text, &shown, boards)
}
