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
//! id = "3f9c0d2a7b1e4c55"      # random, made by `moat init`: the node identity
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
//! [toolchains.esp8266]        # read by `moat::toolchains`, not here
//! sdk = "/opt/esp-open-sdk/sdk"
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
/// Length of a project id in hex digits (`[project] id`).
pub const PROJECT_ID_LEN: usize = 16;
/// Serial defaults (docs/protocol.md: Framing).
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
    /// `[mqtt]`: the broker the project's muxes join (docs/mqtt.md).
    pub mqtt: Option<Mqtt>,
}

/// `[mqtt]`: every key optional (`moat mux --mqtt URL` can give the URL).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mqtt {
    /// `mqtt://[user[:password]@]host[:port]`.
    pub url: Option<String>,
    pub client_id: Option<String>,
    /// Default `moat/<project>`.
    pub prefix: Option<String>,
    /// `"auto"` (default), `"5"` or `"3.1.1"`.
    pub version: Option<String>,
    /// Seconds.
    pub keep_alive: Option<u32>,
    /// Bytes.
    pub max_message: Option<u32>,
    pub user: Option<String>,
    /// The name of the secret holding the password (`password = { secret
    /// = "mqtt_pw" }`: secrets.toml or `MOAT_SECRET_MQTT_PW`).
    pub password_secret: Option<String>,
    /// `mqtts://`: the broker's CA (PEM; relative to the project), else
    /// the system's CAs.
    pub ca: Option<String>,
    /// `mqtts://`: a client certificate and its key (PEM), both or neither.
    pub cert: Option<String>,
    pub key: Option<String>,
    /// `[mqtt.ha.ID]`: Home Assistant entities, in file order.
    pub ha: Vec<HaEntity>,
}

/// `[mqtt.ha.ID]`: one Home Assistant entity backed by a node's command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HaEntity {
    pub id: String,
    pub node: String,
    /// `sensor`, `switch` or `button`.
    pub kind: String,
    /// The command, dotted (`t.temp`).
    pub path: String,
    pub name: Option<String>,
    /// A sensor's stream interval (ms).
    pub every: Option<u32>,
    pub unit: Option<String>,
    pub device_class: Option<String>,
}

/// `[project]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Project {
    /// The project's name (letters, digits, `-`, `_`).
    pub name: String,
    /// The project's random id (16 hex digits, `moat init` writes it):
    /// nodes carry it (`auth.p`) so a client can tell two projects of the
    /// same name apart; `None` in a manifest written before ids existed
    /// ([`crate::project::Project::load`] gives it one).
    pub id: Option<String>,
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
    /// Whether the link authenticates (`auth = true|false`; default true
    /// on tcp, false on process, serial and usb links).
    pub link_auth: bool,
    /// Whether the link is encrypted (`encrypt = true|false`; default true
    /// on a tcp link whose node listens beyond loopback, else false; needs
    /// `link_auth`).
    pub link_encrypt: bool,
    /// `mux = "NAME"`: the mux that holds the node (`moat mux --name
    /// NAME` holds the nodes naming it); `None`: any mux without `--node`.
    pub mux: Option<String>,
    /// `[nodes.NAME.config]` converted to a value, keys in file order;
    /// `Value::Map(vec![])` when absent. Does not yet include the derived
    /// `link` section: see [`Node::config`]. A secret (`{ secret = "x" }`)
    /// is `nil` here until the project resolves it.
    pub user_config: Value,
    /// Values of the config read from secrets (`pw = { secret = "wifi_pw" }`).
    pub secrets: Vec<Secret>,
    /// The config's `apps` entries, in file order, with where each is
    /// written (checked against the firmware by `moat build` and `moat
    /// diff-update`).
    pub apps: Vec<AppEntry>,
    /// The node's key and project id, once known (see
    /// [`crate::project::Project::load`]): they go into its config as
    /// `auth: {k, n, p, q}`.
    pub auth: Option<NodeAuth>,
}

/// A config value kept out of `moat.toml`: read from `secrets.toml` next to
/// it or from `MOAT_SECRET_<NAME>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Secret {
    /// Where it goes in the node's config (`["wifi", "pw"]`).
    pub path: Vec<String>,
    /// The secret's name (`wifi_pw`).
    pub name: String,
    /// `moat.toml:LINE:COL` of the reference, for errors.
    pub at: String,
}

/// One `apps` entry of a node's config: `NAME = "module.Class"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppEntry {
    pub name: String,
    pub module: String,
    pub class: String,
    /// `moat.toml:LINE:COL: nodes.N.config.apps.NAME`, for errors.
    pub at: String,
}

/// What a node's config says about its identity (`auth: {k, n, p, q}`).
#[derive(Clone, PartialEq, Eq)]
pub struct NodeAuth {
    /// The node key (32 bytes).
    pub key: [u8; 32],
    /// The project id.
    pub project: String,
    /// The project's name (`auth.q`: the node tells a client that reached
    /// it by mistake which project it belongs to).
    pub project_name: String,
}

impl fmt::Debug for NodeAuth {
    // Never prints the key (it ends up in logs and test output).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeAuth")
            .field("key", &"<32 bytes>")
            .field("project", &self.project)
            .field("project_name", &self.project_name)
            .finish()
    }
}

/// How the host talks to a node, with every default filled in.
#[derive(Clone, Debug, PartialEq)]
pub enum Link {
    /// The node runs a TCP server on `listen:port`; the host connects to
    /// `host:port`.
    Tcp {
        host: String,
        port: u16,
        /// The address the node listens on: `host` when it is an address
        /// of this machine (loopback, `0.0.0.0`), all interfaces
        /// (`0.0.0.0`) on a device board, which is reached at its own
        /// address.
        listen: String,
    },
    /// The node is a child process of the host; its stdin/stdout is the
    /// link (unix board only).
    Process,
    /// A UART with SerialPacker framing and the reliable layer.
    Serial(SerialLink),
    /// USB CDC: a lossless byte stream on the node's REPL stdio.
    Usb,
}

/// Settings of a serial link (docs/protocol.md: Framing).
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
    /// under `link`: tcp → `{tcp: {h: LISTEN, p: PORT, a: AUTH, e: ENCRYPT}}`,
    /// process and usb → `{stdio: {}}`, serial → `{uart: {b, m, t, w, r,
    /// …extra}}`; `a: true` and `e: true` on those when set (their
    /// node-side default is off).
    pub fn node_side(&self, auth: bool, encrypt: bool) -> Value {
        let mut side = match self {
            Link::Tcp { port, listen, .. } => {
                return Value::map([(
                    "tcp",
                    Value::map([
                        ("h", Value::from(listen.as_str())),
                        ("p", Value::from(*port)),
                        ("a", Value::from(auth)),
                        ("e", Value::from(encrypt)),
                    ]),
                )])
            }
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
        };
        for (key, on) in [("a", auth), ("e", encrypt)] {
            if !on {
                continue;
            }
            if let Value::Map(kinds) = &mut side {
                for (_, v) in kinds.iter_mut() {
                    if let Value::Map(settings) = v {
                        settings.push((Value::from(key), Value::from(true)));
                    }
                }
            }
        }
        side
    }
}

/// Whether `host` is a loopback address (`127.x.y.z`, `::1`, `localhost`).
pub fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback())
}

impl Node {
    /// The node's complete config (its `moat.cfg`): the user's
    /// `[nodes.NAME.config]` plus the `link` section derived from
    /// [`Node::link`]. A `link` table the user wrote is merged over the
    /// derived one (user keys win, maps merge recursively). Then `sec`,
    /// the paths of secret values (the node masks them in `cfg.r`), and
    /// `auth: {k, n, p, q}` when the node's key is known.
    pub fn config(&self) -> Value {
        let mut cfg = self.user_config.clone();
        let derived = self.link.node_side(self.link_auth, self.link_encrypt);
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
        if !self.secrets.is_empty() {
            let paths = self
                .secrets
                .iter()
                .map(|s| Value::Array(s.path.iter().map(|p| Value::from(p.as_str())).collect()))
                .collect();
            pairs.retain(|(k, _)| k.as_str() != Some("sec"));
            pairs.push((Value::from("sec"), Value::Array(paths)));
        }
        if let Some(auth) = &self.auth {
            pairs.retain(|(k, _)| k.as_str() != Some("auth"));
            pairs.push((Value::from("auth"), auth_section(&self.name, auth)));
        }
        cfg
    }
}

/// `auth: {k: bin(32), n: NODE, p: PROJECT-ID, q: PROJECT-NAME}`
/// (docs/auth.md).
pub fn auth_section(node: &str, auth: &NodeAuth) -> Value {
    Value::map([
        ("k", Value::Bin(auth.key.to_vec())),
        ("n", Value::from(node)),
        ("p", Value::from(auth.project.as_str())),
        ("q", Value::from(auth.project_name.as_str())),
    ])
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
/// boards nodes may use. `[apps] paths` defaults to `["apps"]`; relative
/// paths stay relative (see [`load`] for the checks that need the disk).
pub fn parse(text: &str, file: &str, boards: &Boards) -> Result<Manifest, ManifestError> {
    Parser { text, file }.manifest(boards, None)
}

/// Reads and parses `path`; relative `[micropython] path` is resolved
/// against the manifest's folder, `[apps] paths` must exist (the default
/// `apps` is dropped when there is no such folder).
pub fn load(path: &Path, boards: &Boards) -> Result<Manifest, ManifestError> {
    // Shown relative to the working directory when inside it: `moat.toml:7:9`.
    let shown = std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok())
        .filter(|rel| !rel.as_os_str().is_empty())
        .unwrap_or(path)
        .display()
        .to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ManifestError {
        file: shown.clone(),
        line: None,
        column: None,
        key: String::new(),
        message: format!("cannot read the manifest: {e}"),
    })?;
    let root = path.parent().unwrap_or(Path::new("."));
    Parser {
        text: &text,
        file: &shown,
    }
    .manifest(boards, Some(root))
}

type Span = Option<std::ops::Range<usize>>;
type Res<T> = Result<T, ManifestError>;

const TOP_KEYS: &[&str] = &[
    "project",
    "micropython",
    "apps",
    "defaults",
    "nodes",
    "toolchains",
    "mqtt",
];
const MQTT_KEYS: &[&str] = &[
    "url",
    "client_id",
    "prefix",
    "version",
    "keep_alive",
    "max_message",
    "user",
    "password",
    "ca",
    "cert",
    "key",
    "ha",
];
const HA_KEYS: &[&str] = &[
    "node",
    "kind",
    "path",
    "name",
    "every",
    "unit",
    "device_class",
];
const HA_KINDS: &[&str] = &["sensor", "switch", "button"];
const PROJECT_KEYS: &[&str] = &["name", "id"];
const MICROPYTHON_KEYS: &[&str] = &["version", "path", "git", "rev"];
const APPS_KEYS: &[&str] = &["paths"];
const DEFAULTS_KEYS: &[&str] = &["link"];
const NODE_KEYS: &[&str] = &["board", "port", "link", "config", "mux"];
const TCP_KEYS: &[&str] = &["kind", "host", "port", "auth", "encrypt"];
const PROCESS_KEYS: &[&str] = &["kind", "auth", "encrypt"];
const SERIAL_KEYS: &[&str] = &[
    "kind", "baud", "max", "timeout", "window", "retries", "uart", "tx", "rx", "auth", "encrypt",
];
const USB_KEYS: &[&str] = &["kind", "auth", "encrypt"];

/// Integer link settings and their valid ranges (everything but `kind` and
/// `host`, which are strings, and `auth`, a boolean).
const LINK_INTS: &[(&str, i64, i64)] = &[
    ("port", 1, 65535),
    ("baud", 1, 10_000_000),
    ("max", 16, 32767),
    ("timeout", 1, 600_000),
    ("window", 4, 64),
    ("retries", 1, 1000),
    ("uart", 0, 255),
    ("tx", 0, 255),
    ("rx", 0, 255),
];

fn link_int_range(key: &str) -> (i64, i64) {
    LINK_INTS
        .iter()
        .find(|(k, _, _)| *k == key)
        .map_or((0, i64::MAX), |(_, lo, hi)| (*lo, *hi))
}

fn link_keys(kind: LinkKind) -> &'static [&'static str] {
    match kind {
        LinkKind::Tcp => TCP_KEYS,
        LinkKind::Process => PROCESS_KEYS,
        LinkKind::Serial => SERIAL_KEYS,
        LinkKind::Usb => USB_KEYS,
    }
}

/// Every key any link kind accepts (what `[defaults.link]` may hold).
fn all_link_keys() -> Vec<&'static str> {
    let mut keys: Vec<&str> = Vec::new();
    for k in LinkKind::ALL {
        for key in link_keys(k) {
            if !keys.contains(key) {
                keys.push(key);
            }
        }
    }
    keys
}

/// One table of the document with its dotted path, for error messages.
struct Table<'d> {
    path: String,
    table: &'d dyn toml_edit::TableLike,
    span: Span,
}

impl<'d> Table<'d> {
    fn key_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn get(&self, key: &str) -> Option<&'d toml_edit::Item> {
        self.table.get(key).filter(|i| !i.is_none())
    }

    /// The best span for `key`: its value, else its key, else the table.
    fn span_of(&self, key: &str) -> Span {
        match self.table.get_key_value(key) {
            Some((k, item)) => item.span().or_else(|| k.span()).or(self.span.clone()),
            None => self.span.clone(),
        }
    }

    fn key_span(&self, key: &str) -> Span {
        self.table
            .get_key_value(key)
            .and_then(|(k, _)| k.span())
            .or(self.span.clone())
    }
}

struct Parser<'t> {
    text: &'t str,
    file: &'t str,
}

impl<'t> Parser<'t> {
    fn err(&self, span: Span, key: String, message: String) -> ManifestError {
        let (line, column) = match span {
            Some(s) => {
                let (l, c) = line_col(self.text, s.start);
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        ManifestError {
            file: self.file.to_owned(),
            line,
            column,
            key,
            message,
        }
    }

    /// Refuses keys outside `allowed`, listing the valid ones.
    fn only_keys(&self, t: &Table, allowed: &[&str]) -> Res<()> {
        for (key, _) in t.table.iter() {
            if !allowed.contains(&key) {
                return Err(self.err(
                    t.key_span(key),
                    t.key_path(key),
                    format!(
                        "unknown key `{key}`; valid keys: {}{}",
                        allowed.join(", "),
                        did_you_mean(key, allowed.iter().copied())
                    ),
                ));
            }
        }
        Ok(())
    }

    fn wrong_type(&self, t: &Table, key: &str, expected: &str) -> ManifestError {
        let found = t
            .get(key)
            .map_or_else(|| "nothing".to_owned(), |i| article(i.type_name()));
        self.err(
            t.span_of(key),
            t.key_path(key),
            format!("expected {expected}, found {found}"),
        )
    }

    fn table<'d>(&self, t: &Table<'d>, key: &str) -> Res<Option<Table<'d>>> {
        let Some(item) = t.get(key) else {
            return Ok(None);
        };
        let table = item
            .as_table_like()
            .ok_or_else(|| self.wrong_type(t, key, "a table"))?;
        Ok(Some(Table {
            path: t.key_path(key),
            table,
            span: item.span().or_else(|| t.key_span(key)),
        }))
    }

    fn string(&self, t: &Table, key: &str) -> Res<Option<String>> {
        match t.get(key) {
            None => Ok(None),
            Some(i) => i
                .as_str()
                .map(|s| Some(s.to_owned()))
                .ok_or_else(|| self.wrong_type(t, key, "a string")),
        }
    }

    fn required_string(&self, t: &Table, key: &str, example: &str) -> Res<String> {
        self.string(t, key)?.ok_or_else(|| {
            self.err(
                t.span.clone(),
                t.key_path(key),
                format!("missing; add `{key} = {example}` to [{}]", t.path),
            )
        })
    }

    /// An integer in `lo..=hi`.
    fn int(&self, t: &Table, key: &str, lo: i64, hi: i64) -> Res<Option<i64>> {
        let Some(item) = t.get(key) else {
            return Ok(None);
        };
        let v = item
            .as_integer()
            .ok_or_else(|| self.wrong_type(t, key, "an integer"))?;
        if v < lo || v > hi {
            return Err(self.err(
                t.span_of(key),
                t.key_path(key),
                format!("{v} is out of range; valid: {lo} to {hi}"),
            ));
        }
        Ok(Some(v))
    }

    fn manifest(&self, boards: &Boards, root: Option<&Path>) -> Res<Manifest> {
        let doc = toml_edit::ImDocument::parse(self.text).map_err(|e| {
            self.err(
                e.span(),
                String::new(),
                e.message().trim_end().replace('\n', "; "),
            )
        })?;
        let top = Table {
            path: String::new(),
            table: doc.as_table(),
            span: Some(0..0),
        };
        self.only_keys(&top, TOP_KEYS)?;

        let project = self.table(&top, "project")?.ok_or_else(|| {
            self.err(
                None,
                "project".into(),
                "missing; add `[project]` with `name = \"…\"`".into(),
            )
        })?;
        self.only_keys(&project, PROJECT_KEYS)?;
        let name = self.required_string(&project, "name", "\"my-project\"")?;
        if !is_identifier(&name) {
            return Err(self.err(
                project.span_of("name"),
                project.key_path("name"),
                format!("`{name}` is not a valid name; use letters, digits, `-` and `_`"),
            ));
        }

        let id = self.string(&project, "id")?;
        if let Some(id) = &id {
            if id.len() != PROJECT_ID_LEN || !id.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(self.err(
                    project.span_of("id"),
                    project.key_path("id"),
                    format!(
                        "`{id}` is not a project id ({PROJECT_ID_LEN} hex digits); remove the line and any moat command writes a new one"
                    ),
                ));
            }
        }

        let micropython = self.micropython(&top, root)?;
        let app_paths = self.app_paths(&top, root)?;
        let defaults = match self.table(&top, "defaults")? {
            Some(d) => {
                self.only_keys(&d, DEFAULTS_KEYS)?;
                match self.table(&d, "link")? {
                    Some(l) => {
                        self.only_keys(&l, &all_link_keys())?;
                        self.check_link_values(&l)?;
                        Some(l)
                    }
                    None => None,
                }
            }
            None => None,
        };
        let nodes = self.nodes(&top, boards, defaults.as_ref())?;
        let mqtt = self.mqtt(&top, &nodes)?;
        Ok(Manifest {
            project: Project { name, id },
            micropython,
            app_paths,
            nodes,
            mqtt,
        })
    }

    /// `[mqtt]`.
    fn mqtt(&self, top: &Table, nodes: &[Node]) -> Res<Option<Mqtt>> {
        let Some(t) = self.table(top, "mqtt")? else {
            return Ok(None);
        };
        self.only_keys(&t, MQTT_KEYS)?;
        let version = self.string(&t, "version")?;
        if let Some(v) = &version {
            if !["auto", "5", "3.1.1"].contains(&v.as_str()) {
                return Err(self.err(
                    t.span_of("version"),
                    t.key_path("version"),
                    format!("`{v}` is not an MQTT version; valid: \"auto\", \"5\", \"3.1.1\""),
                ));
            }
        }
        let password_secret = match t.get("password") {
            None => None,
            Some(item) => {
                let secret = item
                    .as_table_like()
                    .and_then(|p| p.get("secret"))
                    .and_then(|s| s.as_str());
                match secret {
                    Some(name) => Some(name.to_owned()),
                    None => return Err(self.err(
                        t.span_of("password"),
                        t.key_path("password"),
                        "write the password's secret name, `password = { secret = \"mqtt_pw\" }`, \
                             and the password into secrets.toml (or MOAT_SECRET_MQTT_PW)"
                            .into(),
                    )),
                }
            }
        };
        let (cert, key) = (self.string(&t, "cert")?, self.string(&t, "key")?);
        if cert.is_some() != key.is_some() {
            let (given, missing) = if cert.is_some() {
                ("cert", "key")
            } else {
                ("key", "cert")
            };
            return Err(self.err(
                t.span_of(given),
                t.key_path(given),
                format!(
                    "a client certificate needs both `cert` and `key`: add `{missing} = \"FILE\"`"
                ),
            ));
        }
        Ok(Some(Mqtt {
            ca: self.string(&t, "ca")?,
            cert,
            key,
            url: self.string(&t, "url")?,
            client_id: self.string(&t, "client_id")?,
            prefix: self.string(&t, "prefix")?,
            version,
            keep_alive: self.int(&t, "keep_alive", 5, 65535)?.map(|v| v as u32),
            max_message: self
                .int(&t, "max_message", 64, 256 * 1024 * 1024)?
                .map(|v| v as u32),
            user: self.string(&t, "user")?,
            password_secret,
            ha: self.ha_entities(&t, nodes)?,
        }))
    }

    /// `[mqtt.ha.ID]` tables.
    fn ha_entities(&self, mqtt: &Table, nodes: &[Node]) -> Res<Vec<HaEntity>> {
        let Some(t) = self.table(mqtt, "ha")? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for (id, _) in t.table.iter() {
            if !is_identifier(id) {
                return Err(self.err(
                    t.key_span(id),
                    t.key_path(id),
                    format!("`{id}` is not a valid entity id; use letters, digits, `-` and `_`"),
                ));
            }
            let e = self.table(&t, id)?.expect("iterated keys exist");
            self.only_keys(&e, HA_KEYS)?;
            let node = self.required_string(&e, "node", "\"pump\"")?;
            if !nodes.iter().any(|n| n.name == node) {
                let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
                return Err(self.err(
                    e.span_of("node"),
                    e.key_path("node"),
                    format!(
                        "no node `{node}`; the project's nodes: {}",
                        names.join(", ")
                    ),
                ));
            }
            let kind = self.required_string(&e, "kind", "\"sensor\"")?;
            if !HA_KINDS.contains(&kind.as_str()) {
                return Err(self.err(
                    e.span_of("kind"),
                    e.key_path("kind"),
                    format!(
                        "unknown entity kind `{kind}`; valid: {}",
                        HA_KINDS.join(", ")
                    ),
                ));
            }
            out.push(HaEntity {
                id: id.to_owned(),
                node,
                kind,
                path: self.required_string(&e, "path", "\"t.temp\"")?,
                name: self.string(&e, "name")?,
                every: self.int(&e, "every", 10, 86_400_000)?.map(|v| v as u32),
                unit: self.string(&e, "unit")?,
                device_class: self.string(&e, "device_class")?,
            });
        }
        Ok(out)
    }

    fn micropython(&self, top: &Table, root: Option<&Path>) -> Res<MicroPython> {
        let Some(t) = self.table(top, "micropython")? else {
            return Ok(MicroPython::Version(DEFAULT_MICROPYTHON_VERSION.into()));
        };
        self.only_keys(&t, MICROPYTHON_KEYS)?;
        let given: Vec<&str> = ["version", "path", "git"]
            .into_iter()
            .filter(|k| t.get(k).is_some())
            .collect();
        if given.len() > 1 {
            return Err(self.err(
                t.span_of(given[1]),
                t.key_path(given[1]),
                format!(
                    "give only one of `version`, `path` or `git` (found {})",
                    given.join(" and ")
                ),
            ));
        }
        if t.get("rev").is_some() && given != ["git"] {
            return Err(self.err(
                t.span_of("rev"),
                t.key_path("rev"),
                "`rev` only goes with `git = \"…\"`".into(),
            ));
        }
        Ok(match given.first().copied() {
            Some("path") => {
                let p = PathBuf::from(self.string(&t, "path")?.unwrap_or_default());
                MicroPython::Path(match root {
                    Some(r) if p.is_relative() => r.join(p),
                    _ => p,
                })
            }
            Some("git") => MicroPython::Git {
                url: self.string(&t, "git")?.unwrap_or_default(),
                rev: self.required_string(&t, "rev", "\"v1.25.0\"")?,
            },
            _ => MicroPython::Version(
                self.string(&t, "version")?
                    .unwrap_or_else(|| DEFAULT_MICROPYTHON_VERSION.into()),
            ),
        })
    }

    fn app_paths(&self, top: &Table, root: Option<&Path>) -> Res<Vec<PathBuf>> {
        // Default: `apps`, when that folder exists.
        let default = || {
            let apps = PathBuf::from("apps");
            match root {
                Some(r) if !r.join(&apps).is_dir() => vec![],
                _ => vec![apps],
            }
        };
        let Some(t) = self.table(top, "apps")? else {
            return Ok(default());
        };
        self.only_keys(&t, APPS_KEYS)?;
        let Some(item) = t.get("paths") else {
            return Ok(default());
        };
        let arr = item
            .as_array()
            .ok_or_else(|| self.wrong_type(&t, "paths", "an array of folder names"))?;
        let mut out = Vec::new();
        for (i, v) in arr.iter().enumerate() {
            let key = format!("{}[{i}]", t.key_path("paths"));
            let s = v.as_str().ok_or_else(|| {
                self.err(
                    v.span(),
                    key.clone(),
                    format!(
                        "expected a folder name (string), found {}",
                        article(v.type_name())
                    ),
                )
            })?;
            let p = PathBuf::from(s);
            if let Some(r) = root {
                if !r.join(&p).is_dir() {
                    return Err(self.err(
                        v.span(),
                        key,
                        format!(
                            "folder `{s}` does not exist in {}; create it or remove it from the list",
                            r.display()
                        ),
                    ));
                }
            }
            out.push(p);
        }
        Ok(out)
    }

    fn nodes(&self, top: &Table, boards: &Boards, defaults: Option<&Table>) -> Res<Vec<Node>> {
        let example = "add a node, e.g.\n  [nodes.demo]\n  board = \"unix\"";
        let Some(t) = self.table(top, "nodes")? else {
            return Err(self.err(None, "nodes".into(), format!("no nodes defined; {example}")));
        };
        let mut nodes: Vec<Node> = Vec::new();
        for (name, _) in t.table.iter() {
            if !is_identifier(name) {
                return Err(self.err(
                    t.key_span(name),
                    t.key_path(name),
                    format!("`{name}` is not a valid node name; use letters, digits, `-` and `_`"),
                ));
            }
            let n = self.table(&t, name)?.expect("iterated keys exist");
            nodes.push(self.node(name, &n, boards, defaults)?);
        }
        if nodes.is_empty() {
            return Err(self.err(
                t.span.clone(),
                "nodes".into(),
                format!("no nodes defined; {example}"),
            ));
        }
        // Two nodes listening on one host:port cannot both run.
        for (i, a) in nodes.iter().enumerate() {
            for b in &nodes[..i] {
                if let (
                    Link::Tcp {
                        host: ha, port: pa, ..
                    },
                    Link::Tcp {
                        host: hb, port: pb, ..
                    },
                ) = (&a.link, &b.link)
                {
                    if ha == hb && pa == pb {
                        let nt = self.table(&t, &a.name)?.expect("exists");
                        return Err(self.err(
                            nt.span.clone(),
                            format!("nodes.{}.link.port", a.name),
                            format!(
                                "{ha}:{pa} is already used by node `{}`; give each tcp node its own port",
                                b.name
                            ),
                        ));
                    }
                }
            }
        }
        Ok(nodes)
    }

    fn node(&self, name: &str, t: &Table, boards: &Boards, defaults: Option<&Table>) -> Res<Node> {
        self.only_keys(t, NODE_KEYS)?;
        let board_name = self.required_string(t, "board", "\"unix\"")?;
        let board = boards.get(&board_name).ok_or_else(|| {
            let known: Vec<&str> = boards.names().collect();
            self.err(
                t.span_of("board"),
                t.key_path("board"),
                format!(
                    "unknown board `{board_name}`; known boards: {}{}",
                    known.join(", "),
                    did_you_mean(&board_name, known.iter().copied())
                ),
            )
        })?;
        if t.get("port").is_some_and(|p| p.is_integer()) {
            return Err(self.err(
                t.span_of("port"),
                t.key_path("port"),
                "expected the device path (e.g. \"/dev/ttyUSB0\"), found an integer; \
                 a TCP port goes into `link = { kind = \"tcp\", port = … }`"
                    .into(),
            ));
        }
        let port = self.string(t, "port")?;
        let mux = self.string(t, "mux")?;
        if let Some(m) = &mux {
            if !is_identifier(m) {
                return Err(self.err(
                    t.span_of("mux"),
                    t.key_path("mux"),
                    format!("`{m}` is not a valid mux name; use letters, digits, `-` and `_`"),
                ));
            }
        }
        let local = board.flash == crate::board::Flash::Local;
        let (link, link_auth, link_encrypt) = self.link(t, board.link, defaults, local)?;
        let mut secrets = Vec::new();
        let mut apps = Vec::new();
        let user_config = match self.table(t, "config")? {
            Some(c) => self.config(&c, &mut secrets, &mut apps)?,
            None => Value::Map(vec![]),
        };
        Ok(Node {
            name: name.to_owned(),
            board: board_name,
            port,
            link,
            link_auth,
            link_encrypt,
            mux,
            user_config,
            secrets,
            apps,
            auth: None,
        })
    }

    /// Types and ranges of every setting in a link table (shared defaults
    /// are checked even where no node uses them).
    fn check_link_values(&self, t: &Table) -> Res<()> {
        for (key, _) in t.table.iter() {
            match key {
                "kind" => {
                    self.link_kind(t, key)?;
                }
                "host" => {
                    self.string(t, key)?;
                }
                "auth" | "encrypt" => {
                    self.bool(t, key)?;
                }
                _ => {
                    let (lo, hi) = link_int_range(key);
                    self.int(t, key, lo, hi)?;
                }
            }
        }
        Ok(())
    }

    /// A link kind named by `key` in `t`.
    fn link_kind(&self, t: &Table, key: &str) -> Res<Option<LinkKind>> {
        match self.string(t, key)? {
            None => Ok(None),
            Some(s) => LinkKind::parse(&s).map(Some).ok_or_else(|| {
                let valid: Vec<&str> = LinkKind::ALL.iter().map(|k| k.as_str()).collect();
                self.err(
                    t.span_of(key),
                    t.key_path(key),
                    format!(
                        "unknown link kind `{s}`; valid kinds: {}{}",
                        valid.join(", "),
                        did_you_mean(&s, valid.iter().copied())
                    ),
                )
            }),
        }
    }

    fn bool(&self, t: &Table, key: &str) -> Res<Option<bool>> {
        match t.get(key) {
            None => Ok(None),
            Some(i) => i
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.wrong_type(t, key, "true or false")),
        }
    }

    /// A node's link: `link = "kind"` or `link = { kind = …, … }`, over
    /// `[defaults.link]`, over the board's default kind; whether it
    /// authenticates, and whether it is encrypted. `local`: the board runs on this machine (its TCP
    /// server listens where the manifest's `host` says).
    fn link(
        &self,
        node: &Table,
        board_kind: LinkKind,
        defaults: Option<&Table>,
        local: bool,
    ) -> Res<(Link, bool, bool)> {
        let own: Option<Table> = match node.get("link") {
            None => None,
            Some(item) if item.is_str() => None,
            Some(_) => self.table(node, "link")?,
        };
        // The kind: the node's, else the defaults', else the board's.
        let kind = match node.get("link") {
            Some(i) if i.is_str() => self.link_kind(node, "link")?,
            Some(_) => own
                .as_ref()
                .map(|o| self.link_kind(o, "kind"))
                .transpose()?
                .flatten(),
            None => None,
        };
        let kind = match kind {
            Some(k) => k,
            None => match defaults {
                Some(d) => self.link_kind(d, "kind")?.unwrap_or(board_kind),
                None => board_kind,
            },
        };
        if let Some(o) = &own {
            let allowed = link_keys(kind);
            for (key, _) in o.table.iter() {
                if !allowed.contains(&key) {
                    let why = if all_link_keys().contains(&key) {
                        format!("`{key}` does not apply to a {kind} link")
                    } else {
                        format!("unknown key `{key}`")
                    };
                    return Err(self.err(
                        o.key_span(key),
                        o.key_path(key),
                        format!(
                            "{why}; valid keys for a {kind} link: {}{}",
                            allowed.join(", "),
                            did_you_mean(key, allowed.iter().copied())
                        ),
                    ));
                }
            }
        }
        // A setting: the node's own, else the shared default.
        let pick = |key: &str| -> Option<&Table> {
            own.as_ref()
                .filter(|o| o.get(key).is_some())
                .or(defaults.filter(|d| d.get(key).is_some()))
        };
        let int = |key: &str, default: u32| -> Res<u32> {
            let (lo, hi) = link_int_range(key);
            match pick(key) {
                Some(t) => Ok(self.int(t, key, lo, hi)?.map_or(default, |v| v as u32)),
                None => Ok(default),
            }
        };
        let auth = match pick("auth") {
            Some(t) => self.bool(t, "auth")?,
            None => None,
        };
        let link_auth = auth.unwrap_or(kind == LinkKind::Tcp);
        let link = match kind {
            LinkKind::Tcp => {
                let host = match pick("host") {
                    Some(t) => self.string(t, "host")?.unwrap_or_default(),
                    None => DEFAULT_TCP_HOST.into(),
                };
                // A node on this machine listens where the manifest says
                // (loopback stays loopback); a device is reached at its
                // own address and listens on its interfaces.
                let listen = if local || is_loopback(&host) {
                    host.clone()
                } else {
                    "0.0.0.0".to_owned()
                };
                if !link_auth && !is_loopback(&listen) {
                    let t = pick("auth").expect("auth = false was written");
                    return Err(self.err(
                        t.span_of("auth"),
                        t.key_path("auth"),
                        format!(
                            "`auth = false` on a tcp link whose node listens on {listen} lets anyone who reaches that address control the node; \
                             use `host = \"127.0.0.1\"` (loopback only) or remove `auth = false`"
                        ),
                    ));
                }
                Link::Tcp {
                    host,
                    port: int("port", DEFAULT_TCP_PORT.into())? as u16,
                    listen,
                }
            }
            LinkKind::Process => Link::Process,
            LinkKind::Usb => Link::Usb,
            LinkKind::Serial => {
                let mut extra = Vec::new();
                for (key, node_key) in [("uart", "n"), ("tx", "tx"), ("rx", "rx")] {
                    if pick(key).is_some() {
                        extra.push((node_key.to_owned(), Value::from(int(key, 0)?)));
                    }
                }
                Link::Serial(SerialLink {
                    baud: int("baud", DEFAULT_BAUD)?,
                    max: int("max", DEFAULT_SERIAL_MAX)?,
                    timeout_ms: int("timeout", DEFAULT_SERIAL_TIMEOUT_MS)?,
                    window: int("window", DEFAULT_SERIAL_WINDOW)?,
                    retries: int("retries", DEFAULT_SERIAL_RETRIES)?,
                    extra,
                })
            }
        };
        // Encryption: on by default where the node listens beyond loopback
        // (anyone on that network reads the traffic otherwise).
        let wide = matches!(&link, Link::Tcp { listen, .. } if !is_loopback(listen));
        let link_encrypt = match pick("encrypt") {
            Some(t) => {
                let on = self.bool(t, "encrypt")?.unwrap_or(wide);
                if on && !link_auth {
                    return Err(self.err(
                        t.span_of("encrypt"),
                        t.key_path("encrypt"),
                        "`encrypt = true` needs the authenticated handshake (its keys come from it): remove `auth = false`".to_owned(),
                    ));
                }
                on
            }
            None => wide && link_auth,
        };
        Ok((link, link_auth, link_encrypt))
    }

    /// `[nodes.N.config]` as a value; `apps` entries must read
    /// `module.Class` (collected into `apps`), each app's settings be a
    /// table, and the sections the node runtime reads itself (`wdt`, `net`)
    /// have their keys and types; `auth` and `sec` are moat's. `{ secret =
    /// "name" }` values are collected into `secrets` (and are `nil` in the
    /// value until resolved).
    fn config(
        &self,
        t: &Table,
        secrets: &mut Vec<Secret>,
        apps_out: &mut Vec<AppEntry>,
    ) -> Res<Value> {
        if let Some(apps) = self.table(t, "apps")? {
            for (name, item) in apps.table.iter() {
                let parts = item
                    .as_str()
                    .and_then(|s| s.rsplit_once('.'))
                    .filter(|(m, c)| !m.is_empty() && !c.is_empty());
                let Some((module, class)) = parts else {
                    return Err(self.err(
                        apps.span_of(name),
                        apps.key_path(name),
                        "expected \"module.Class\" (e.g. \"fs.Files\")".into(),
                    ));
                };
                if matches!(name, "sys" | "cfg") {
                    return Err(self.err(
                        apps.key_span(name),
                        apps.key_path(name),
                        format!("`{name}` is a built-in app of every node; name the app otherwise"),
                    ));
                }
                let (line, col) = apps
                    .span_of(name)
                    .map_or((0, 0), |s| line_col(self.text, s.start));
                apps_out.push(AppEntry {
                    name: name.to_owned(),
                    module: module.to_owned(),
                    class: class.to_owned(),
                    at: format!("{}:{line}:{col}: {}", self.file, apps.key_path(name)),
                });
                if t.get(name).is_some_and(|i| i.as_table_like().is_none()) {
                    return Err(self.wrong_type(t, name, "a table (the app's settings)"));
                }
            }
        }
        self.check_node_sections(t)?;
        self.find_secrets(t.table, &mut vec![], &t.path, secrets)?;
        let mut value = table_to_value(t.table);
        for s in secrets.iter() {
            if let Some(slot) = value_at_mut(&mut value, &s.path) {
                *slot = Value::Nil;
            }
        }
        Ok(value)
    }

    /// The config sections the node runtime reads itself: `wdt`
    /// (node-runtime/wdt.py), `net` (net.py); `auth` and `sec`, which moat
    /// writes.
    fn check_node_sections(&self, t: &Table) -> Res<()> {
        if let Some(w) = self.table(t, "wdt")? {
            self.only_keys(&w, &["t", "s", "n"])?;
            self.int(&w, "t", 1, 86_400)?;
            self.int(&w, "s", 0, 4)?;
            self.int(&w, "n", -1, 1_000_000)?;
        }
        if let Some(n) = self.table(t, "net")? {
            self.only_keys(&n, &["ssid", "pw", "t"])?;
            self.string(&n, "ssid")?;
            // a string, or a `{ secret = … }` table (checked with the secrets)
            if n.get("pw")
                .is_some_and(|i| i.as_str().is_none() && i.as_table_like().is_none())
            {
                return Err(self.wrong_type(&n, "pw", "a string or `{ secret = \"name\" }`"));
            }
            self.int(&n, "t", 1, 3_600)?;
        }
        for (key, what) in [
            ("auth", "the node's key and identity (docs/auth.md)"),
            ("sec", "the paths of its secret values"),
        ] {
            if t.get(key).is_some() {
                return Err(self.err(
                    t.key_span(key),
                    t.key_path(key),
                    format!("`{key}` is written by moat ({what}); remove it"),
                ));
            }
        }
        Ok(())
    }

    /// Collects `{ secret = "name" }` tables under `t` (at `path`).
    fn find_secrets(
        &self,
        t: &dyn toml_edit::TableLike,
        path: &mut Vec<String>,
        shown: &str,
        out: &mut Vec<Secret>,
    ) -> Res<()> {
        for (key, item) in t.iter() {
            let Some(inner) = item.as_table_like() else {
                continue;
            };
            path.push(key.to_owned());
            if let Some(name_item) = inner.get("secret") {
                let key_path = format!("{shown}.{}.secret", path.join("."));
                let span = name_item.span().or_else(|| item.span());
                let name = name_item.as_str().filter(|n| is_secret_name(n));
                let Some(name) = name.filter(|_| inner.len() == 1) else {
                    return Err(self.err(
                        span,
                        key_path,
                        "a secret reads `{ secret = \"name\" }` (letters, digits and `_`; nothing else in the table)".into(),
                    ));
                };
                let (line, col) = span.map_or((0, 0), |s| line_col(self.text, s.start));
                out.push(Secret {
                    path: path.clone(),
                    name: name.to_owned(),
                    at: format!("{}:{line}:{col}", self.file),
                });
            } else {
                self.find_secrets(inner, path, shown, out)?;
            }
            path.pop();
        }
        Ok(())
    }
}

fn is_secret_name(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The value at `path` (map keys) in `v`.
pub fn value_at_mut<'v>(v: &'v mut Value, path: &[String]) -> Option<&'v mut Value> {
    let mut at = v;
    for key in path {
        let Value::Map(pairs) = at else { return None };
        at = pairs
            .iter_mut()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)?;
    }
    Some(at)
}

fn table_to_value(t: &dyn toml_edit::TableLike) -> Value {
    Value::Map(
        t.iter()
            .filter(|(_, i)| !i.is_none())
            .map(|(k, i)| (Value::from(k), item_to_value(i)))
            .collect(),
    )
}

fn item_to_value(item: &toml_edit::Item) -> Value {
    use toml_edit::Item;
    match item {
        Item::None => Value::Nil,
        Item::Value(v) => value_to_value(v),
        Item::Table(t) => table_to_value(t),
        Item::ArrayOfTables(a) => Value::Array(a.iter().map(|t| table_to_value(t)).collect()),
    }
}

/// TOML → moat value: int → Int, float → Float, datetime → Str, tables →
/// maps with keys in file order.
fn value_to_value(v: &toml_edit::Value) -> Value {
    use toml_edit::Value as T;
    match v {
        T::String(s) => Value::Str(s.value().clone()),
        T::Integer(i) => Value::Int((*i.value()).into()),
        T::Float(f) => Value::Float(*f.value()),
        T::Boolean(b) => Value::Bool(*b.value()),
        T::Datetime(d) => Value::Str(d.value().to_string()),
        T::Array(a) => Value::Array(a.iter().map(value_to_value).collect()),
        T::InlineTable(t) => table_to_value(t),
    }
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// "a string", "an integer", … for type names.
fn article(type_name: &str) -> String {
    match type_name.chars().next() {
        Some('a' | 'e' | 'i' | 'o' | 'u') => format!("an {type_name}"),
        _ => format!("a {type_name}"),
    }
}

/// ` (did you mean `x`?)` when one candidate is close to `word`.
pub fn did_you_mean<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> String {
    candidates
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3) && *d < c.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| format!(" (did you mean `{c}`?)"))
        .unwrap_or_default()
}

/// Edit distance counting a swap of neighbours as one edit (optimal
/// string alignment): `esp8622` is 2 away from `esp8266`. Small inputs only.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(text: &str) -> Manifest {
        parse(text, "moat.toml", &Boards::embedded()).unwrap_or_else(|e| panic!("{e}"))
    }

    fn parse_err(text: &str) -> String {
        parse(text, "moat.toml", &Boards::embedded())
            .expect_err("manifest should be refused")
            .to_string()
    }

    const HEAD: &str = "[project]\nname = \"t\"\n";

    #[test]
    fn mqtt_section_and_per_node_mux_are_read() {
        let m = parse_ok(&format!(
            "{HEAD}[mqtt]\nurl = \"mqtt://broker.lan\"\nversion = \"3.1.1\"\nkeep_alive = 30\n\
             user = \"moat\"\npassword = {{ secret = \"mqtt_pw\" }}\n\
             [nodes.a]\nboard = \"unix\"\nmux = \"hall\"\n"
        ));
        let mqtt = m.mqtt.unwrap();
        assert_eq!(mqtt.url.as_deref(), Some("mqtt://broker.lan"));
        assert_eq!(mqtt.version.as_deref(), Some("3.1.1"));
        assert_eq!(mqtt.keep_alive, Some(30));
        assert_eq!(mqtt.password_secret.as_deref(), Some("mqtt_pw"));
        assert_eq!(m.nodes[0].mux.as_deref(), Some("hall"));
        let ha = parse_ok(&format!(
            "{HEAD}[nodes.a]\nboard = \"unix\"\n[mqtt.ha.temp]\nnode = \"a\"\nkind = \"sensor\"\n\
             path = \"t.temp\"\nunit = \"°C\"\ndevice_class = \"temperature\"\n"
        ))
        .mqtt
        .unwrap()
        .ha;
        assert_eq!(ha.len(), 1);
        assert_eq!((ha[0].id.as_str(), ha[0].kind.as_str()), ("temp", "sensor"));
        assert_eq!(ha[0].unit.as_deref(), Some("°C"));
        let plain = format!("{HEAD}[nodes.a]\nboard = \"unix\"\n");
        assert_eq!(parse_ok(&plain).mqtt, None);
    }

    #[test]
    fn mqtt_mistakes_say_the_fix() {
        let node = "[nodes.a]\nboard = \"unix\"\n";
        let e = parse_err(&format!("{HEAD}{node}[mqtt]\npassword = \"hunter2\"\n"));
        assert!(e.contains("secret = "), "{e}");
        let e = parse_err(&format!("{HEAD}{node}[mqtt]\nversion = \"4\"\n"));
        assert!(e.contains("\"3.1.1\""), "{e}");
        let e = parse_err(&format!("{HEAD}{node}[mqtt]\nkeep_alive = 1\n"));
        assert!(e.contains("5 to 65535"), "{e}");
        let e = parse_err(&format!(
            "{HEAD}{node}[mqtt.ha.x]\nnode = \"zz\"\nkind = \"sensor\"\npath = \"p\"\n"
        ));
        assert!(e.contains("no node `zz`"), "{e}");
        let e = parse_err(&format!(
            "{HEAD}{node}[mqtt.ha.x]\nnode = \"a\"\nkind = \"light\"\npath = \"p\"\n"
        ));
        assert!(e.contains("valid: sensor, switch, button"), "{e}");
        let e = parse_err(&format!("{HEAD}{node}[mqtt]\nbroker = \"x\"\n"));
        assert!(e.contains("unknown key `broker`"), "{e}");
    }

    fn node_cfg(body: &str) -> Value {
        let m = parse_ok(&format!("{HEAD}{body}"));
        m.nodes[0].config()
    }

    #[test]
    fn tcp_link_makes_the_node_listen_on_its_port_and_host_with_auth() {
        let cfg = node_cfg("[nodes.a]\nboard = \"unix\"\nlink = { kind = \"tcp\", port = 4000 }\n");
        assert_eq!(
            cfg,
            Value::map([(
                "link",
                Value::map([(
                    "tcp",
                    Value::map([
                        ("h", Value::from("127.0.0.1")),
                        ("p", Value::from(4000)),
                        ("a", Value::from(true)),
                        ("e", Value::from(false))
                    ])
                )])
            )])
        );
    }

    #[test]
    fn a_local_node_listens_on_all_interfaces_only_when_written() {
        let listen = |host: &str, board: &str| {
            let cfg = node_cfg(&format!(
                "[nodes.a]\nboard = \"{board}\"\nlink = {{ kind = \"tcp\", host = \"{host}\" }}\n"
            ));
            cfg.get("link")
                .unwrap()
                .get("tcp")
                .unwrap()
                .get("h")
                .cloned()
        };
        assert_eq!(listen("127.0.0.1", "unix"), Some(Value::from("127.0.0.1")));
        assert_eq!(listen("0.0.0.0", "unix"), Some(Value::from("0.0.0.0")));
        // A device reached at its own address listens on its interfaces.
        assert_eq!(
            listen("192.168.1.50", "esp32"),
            Some(Value::from("0.0.0.0"))
        );
    }

    #[test]
    fn auth_false_is_accepted_only_on_a_loopback_listener() {
        let m = parse_ok(&format!(
            "{HEAD}[nodes.a]\nboard = \"unix\"\nlink = {{ kind = \"tcp\", host = \"127.0.0.1\", auth = false }}\n"
        ));
        assert!(!m.nodes[0].link_auth);
        assert_eq!(
            m.nodes[0]
                .config()
                .get("link")
                .unwrap()
                .get("tcp")
                .unwrap()
                .get("a"),
            Some(&Value::from(false))
        );
        let e = parse_err(&format!(
            "{HEAD}[nodes.a]\nboard = \"unix\"\nlink = {{ kind = \"tcp\", host = \"0.0.0.0\", auth = false }}\n"
        ));
        assert!(
            e.starts_with("moat.toml:5:49: nodes.a.link.auth: `auth = false` on a tcp link whose node listens on 0.0.0.0")
                && e.contains("host = \"127.0.0.1\""),
            "{e}"
        );
    }

    #[test]
    fn encryption_defaults_on_beyond_loopback_and_needs_auth() {
        let e_of = |link: &str| {
            let m = parse_ok(&format!(
                "{HEAD}[nodes.a]\nboard = \"unix\"\nlink = {link}\n"
            ));
            let cfg = m.nodes[0].config();
            let side = cfg.get("link").unwrap();
            let kind = side.get("tcp").or(side.get("uart")).or(side.get("stdio"));
            (m.nodes[0].link_encrypt, kind.unwrap().get("e").cloned())
        };
        assert_eq!(
            e_of("{ kind = \"tcp\", host = \"0.0.0.0\" }"),
            (true, Some(Value::from(true)))
        );
        assert_eq!(
            e_of("{ kind = \"tcp\", host = \"127.0.0.1\" }"),
            (false, Some(Value::from(false)))
        );
        assert_eq!(
            e_of("{ kind = \"tcp\", host = \"0.0.0.0\", encrypt = false }"),
            (false, Some(Value::from(false)))
        );
        assert_eq!(
            e_of("{ kind = \"process\", auth = true, encrypt = true }"),
            (true, Some(Value::from(true)))
        );
        assert_eq!(e_of("\"process\""), (false, None));
        let e = parse_err(&format!(
            "{HEAD}[nodes.a]\nboard = \"unix\"\nlink = {{ kind = \"tcp\", host = \"127.0.0.1\", auth = false, encrypt = true }}\n"
        ));
        assert!(
            e.contains("nodes.a.link.encrypt: `encrypt = true` needs the authenticated handshake"),
            "{e}"
        );
    }

    #[test]
    fn auth_defaults_off_on_stdio_and_serial_and_can_be_turned_on() {
        let m = parse_ok(&format!(
            "{HEAD}[nodes.a]\nboard = \"unix\"\nlink = \"process\"\n[nodes.b]\nboard = \"esp8266\"\nlink = {{ auth = true }}\n"
        ));
        assert!(!m.nodes[0].link_auth);
        assert_eq!(
            m.nodes[0].config().get("link"),
            Some(&Value::map([("stdio", Value::Map(vec![]))]))
        );
        assert!(m.nodes[1].link_auth);
        let uart = m.nodes[1].config();
        assert_eq!(
            uart.get("link").unwrap().get("uart").unwrap().get("a"),
            Some(&Value::from(true))
        );
        let e = parse_err(&format!(
            "{HEAD}[nodes.a]\nboard = \"unix\"\nlink = {{ kind = \"process\", auth = 1 }}\n"
        ));
        assert!(
            e.contains("nodes.a.link.auth: expected true or false"),
            "{e}"
        );
    }

    #[test]
    fn project_id_is_read_and_checked() {
        let m = parse_ok(
            "[project]\nname = \"t\"\nid = \"0123456789abcdef\"\n[nodes.a]\nboard = \"unix\"\n",
        );
        assert_eq!(m.project.id.as_deref(), Some("0123456789abcdef"));
        let e = parse_err("[project]\nname = \"t\"\nid = \"xyz\"\n[nodes.a]\nboard = \"unix\"\n");
        assert!(
            e.starts_with("moat.toml:3:6: project.id: `xyz` is not a project id"),
            "{e}"
        );
    }

    #[test]
    fn mqtt_tls_files_are_read_and_a_lone_cert_is_refused() {
        let m = parse_ok(&format!(
            "{HEAD}[mqtt]\nurl = \"mqtts://b.lan\"\nca = \"tls/ca.pem\"\ncert = \"c.pem\"\nkey = \"c.key\"\n[nodes.a]\nboard = \"unix\"\n"
        ));
        let mqtt = m.mqtt.unwrap();
        assert_eq!(mqtt.ca.as_deref(), Some("tls/ca.pem"));
        assert_eq!(
            (mqtt.cert.as_deref(), mqtt.key.as_deref()),
            (Some("c.pem"), Some("c.key"))
        );
        let e = parse_err(&format!(
            "{HEAD}[mqtt]\ncert = \"c.pem\"\n[nodes.a]\nboard = \"unix\"\n"
        ));
        assert!(
            e.starts_with("moat.toml:4:8: mqtt.cert: a client certificate needs both"),
            "{e}"
        );
        assert!(e.contains("add `key = \"FILE\"`"), "{e}");
    }

    #[test]
    fn the_node_sections_are_checked_where_they_are_written() {
        let node = |config: &str| {
            format!("{HEAD}[nodes.a]\nboard = \"unix\"\n[nodes.a.config]\n{config}\n")
        };
        assert_eq!(
            parse_err(&node("wdt = \"banana\"")),
            "moat.toml:6:7: nodes.a.config.wdt: expected a table, found a string"
        );
        let e = parse_err(&node("wdt = { t = 0 }"));
        assert!(e.starts_with("moat.toml:6:13: nodes.a.config.wdt.t"), "{e}");
        let e = parse_err(&node("wdt = { timeout = 5 }"));
        assert!(
            e.contains("unknown key `timeout`; valid keys: t, s, n"),
            "{e}"
        );
        let e = parse_err(&node("net = { ssid = \"x\", pw = 5 }"));
        assert!(
            e.contains("nodes.a.config.net.pw: expected a string or"),
            "{e}"
        );
        let e = parse_err(&node("auth = { k = \"x\" }"));
        assert!(e.contains("`auth` is written by moat"), "{e}");
        let e = parse_err(&node("apps = { sys = \"x.Y\" }"));
        assert!(e.contains("`sys` is a built-in app"), "{e}");
        let e = parse_err(&node("apps = { t = \"tapp.T\" }\nt = 5"));
        assert!(
            e.contains("nodes.a.config.t: expected a table (the app's settings)"),
            "{e}"
        );
        let m = parse_ok(&node(
            "apps = { t = \"pkg.tapp.T\" }\nt = { v = 1 }\nwdt = { t = 5, s = 1, n = -1 }\nnet = { ssid = \"x\", pw = { secret = \"pw\" } }",
        ));
        assert_eq!(
            m.nodes[0].apps,
            vec![AppEntry {
                name: "t".into(),
                module: "pkg.tapp".into(),
                class: "T".into(),
                at: "moat.toml:6:14: nodes.a.config.apps.t".into(),
            }]
        );
    }

    #[test]
    fn the_config_carries_auth_and_the_secret_paths() {
        let mut m = parse_ok(&format!(
            "{HEAD}[nodes.a]\nboard = \"unix\"\n[nodes.a.config]\nwifi = {{ ssid = \"x\", pw = {{ secret = \"wifi_pw\" }} }}\n"
        ));
        let node = &mut m.nodes[0];
        assert_eq!(
            node.secrets,
            vec![Secret {
                path: vec!["wifi".into(), "pw".into()],
                name: "wifi_pw".into(),
                at: "moat.toml:6:38".into()
            }]
        );
        assert_eq!(
            node.user_config.get("wifi").unwrap().get("pw"),
            Some(&Value::Nil)
        );
        node.auth = Some(NodeAuth {
            key: [7; 32],
            project: "0123456789abcdef".into(),
            project_name: "garden".into(),
        });
        let cfg = node.config();
        assert_eq!(
            cfg.get("sec"),
            Some(&Value::Array(vec![Value::Array(vec![
                "wifi".into(),
                "pw".into()
            ])]))
        );
        assert_eq!(
            cfg.get("auth"),
            Some(&Value::map([
                ("k", Value::Bin(vec![7; 32])),
                ("n", Value::from("a")),
                ("p", Value::from("0123456789abcdef")),
                ("q", Value::from("garden")),
            ]))
        );
        assert!(
            !format!("{node:?}").contains("7, 7"),
            "the key is not in Debug output"
        );
        let e = parse_err(&format!(
            "{HEAD}[nodes.a]\nboard = \"unix\"\n[nodes.a.config]\npw = {{ secret = \"a b\" }}\n"
        ));
        assert!(
            e.contains("nodes.a.config.pw.secret: a secret reads"),
            "{e}"
        );
    }

    #[test]
    fn tcp_link_defaults_to_localhost_and_port_27587() {
        let m = parse_ok(&format!("{HEAD}[nodes.a]\nboard = \"unix\"\n"));
        assert_eq!(
            m.nodes[0].link,
            Link::Tcp {
                host: "127.0.0.1".into(),
                port: 27587,
                listen: "127.0.0.1".into()
            }
        );
    }

    #[test]
    fn process_and_usb_links_use_stdio_on_the_node() {
        for kind in ["process", "usb"] {
            let cfg = node_cfg(&format!(
                "[nodes.a]\nboard = \"unix\"\nlink = {{ kind = \"{kind}\" }}\n"
            ));
            assert_eq!(
                cfg.get("link"),
                Some(&Value::map([("stdio", Value::Map(vec![]))])),
                "{kind}"
            );
        }
    }

    #[test]
    fn link_may_be_given_as_just_its_kind() {
        let m = parse_ok(&format!(
            "{HEAD}[nodes.a]\nboard = \"unix\"\nlink = \"process\"\n"
        ));
        assert_eq!(m.nodes[0].link, Link::Process);
    }

    #[test]
    fn serial_link_carries_framing_and_reliable_settings_to_the_node() {
        let cfg = node_cfg(
            "[nodes.a]\nboard = \"esp8266\"\nlink = { kind = \"serial\", baud = 9600, window = 4, uart = 1 }\n",
        );
        assert_eq!(
            cfg.get("link"),
            Some(&Value::map([(
                "uart",
                Value::map([
                    ("b", Value::from(9600)),
                    ("m", Value::from(255)),
                    ("t", Value::from(1000)),
                    ("w", Value::from(4)),
                    ("r", Value::from(5)),
                    ("n", Value::from(1)),
                ])
            )]))
        );
    }

    #[test]
    fn board_default_link_applies_when_the_node_names_none() {
        let m = parse_ok(&format!(
            "{HEAD}[nodes.a]\nboard = \"esp8266\"\n[nodes.b]\nboard = \"rpi-pico\"\n"
        ));
        assert_eq!(m.nodes[0].link.kind(), LinkKind::Serial);
        assert_eq!(m.nodes[1].link, Link::Usb);
    }

    #[test]
    fn shared_link_defaults_apply_where_they_fit_and_node_keys_win() {
        let m = parse_ok(&format!(
            "{HEAD}[defaults.link]\ntimeout = 300\nbaud = 57600\nport = 5000\n\
             [nodes.h]\nboard = \"unix\"\n\
             [nodes.p]\nboard = \"esp8266\"\nlink = {{ baud = 9600 }}\n"
        ));
        assert_eq!(
            m.nodes[0].link,
            Link::Tcp {
                host: "127.0.0.1".into(),
                port: 5000,
                listen: "127.0.0.1".into()
            }
        );
        let Link::Serial(s) = &m.nodes[1].link else {
            panic!("serial expected")
        };
        assert_eq!((s.baud, s.timeout_ms), (9600, 300));
    }

    #[test]
    fn user_link_keys_merge_over_the_derived_ones() {
        let cfg = node_cfg(
            "[nodes.a]\nboard = \"unix\"\n[nodes.a.config]\nlink = { tcp = { p = 1 }, x = 2 }\n",
        );
        assert_eq!(
            cfg.get("link"),
            Some(&Value::map([
                (
                    "tcp",
                    Value::map([
                        ("h", Value::from("127.0.0.1")),
                        ("p", Value::from(1)),
                        ("a", Value::from(true)),
                        ("e", Value::from(false))
                    ])
                ),
                ("x", Value::from(2)),
            ]))
        );
    }

    #[test]
    fn config_converts_toml_types_and_keeps_file_order() {
        let cfg = node_cfg(
            "[nodes.a]\nboard = \"unix\"\n[nodes.a.config]\nz = 1\nf = 1.5\ns = \"x\"\nb = true\n\
             arr = [1, \"two\"]\nd = 1979-05-27T07:32:00Z\napps = { t = \"counter.Counter\", fs = \"fs.Files\" }\n",
        );
        let Value::Map(pairs) = &cfg else { panic!() };
        let keys: Vec<&str> = pairs.iter().filter_map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["z", "f", "s", "b", "arr", "d", "apps", "link"]);
        assert_eq!(cfg.get("z"), Some(&Value::Int(1)));
        assert_eq!(cfg.get("f"), Some(&Value::Float(1.5)));
        assert_eq!(cfg.get("b"), Some(&Value::Bool(true)));
        assert_eq!(
            cfg.get("arr"),
            Some(&Value::Array(vec![Value::Int(1), Value::from("two")]))
        );
        assert_eq!(cfg.get("d"), Some(&Value::from("1979-05-27T07:32:00Z")));
        let apps = cfg.get("apps").unwrap();
        assert_eq!(apps.get("t"), Some(&Value::from("counter.Counter")));
    }

    #[test]
    fn micropython_source_variants() {
        let m = parse_ok(&format!("{HEAD}[nodes.a]\nboard = \"unix\"\n"));
        assert_eq!(m.micropython, MicroPython::Version("1.25.0".into()));
        let m = parse_ok(&format!(
            "{HEAD}[micropython]\ngit = \"https://example.invalid/mp.git\"\nrev = \"v1.25.0\"\n[nodes.a]\nboard = \"unix\"\n"
        ));
        assert_eq!(
            m.micropython,
            MicroPython::Git {
                url: "https://example.invalid/mp.git".into(),
                rev: "v1.25.0".into()
            }
        );
        let e = parse_err(&format!(
            "{HEAD}[micropython]\nversion = \"1.25.0\"\npath = \"x\"\n[nodes.a]\nboard = \"unix\"\n"
        ));
        assert!(e.contains("micropython.path: give only one of"), "{e}");
    }

    #[test]
    fn unknown_board_names_place_choices_and_suggestion() {
        let e = parse_err(&format!("{HEAD}[nodes.pump]\nboard = \"esp8622\"\n"));
        assert_eq!(
            e,
            "moat.toml:4:9: nodes.pump.board: unknown board `esp8622`; known boards: \
             esp32, esp8266, qemu-mps2, rpi-pico, unix (did you mean `esp8266`?)"
        );
    }

    #[test]
    fn link_key_of_another_kind_is_refused_with_the_valid_keys() {
        let e = parse_err(&format!(
            "{HEAD}[nodes.a]\nboard = \"unix\"\nlink = {{ kind = \"tcp\", baud = 9600 }}\n"
        ));
        assert!(
            e.contains("nodes.a.link.baud: `baud` does not apply to a tcp link; valid keys for a tcp link: kind, host, port, auth"),
            "{e}"
        );
    }

    #[test]
    fn two_tcp_nodes_on_one_port_are_refused() {
        let e = parse_err(&format!(
            "{HEAD}[nodes.a]\nboard = \"unix\"\n[nodes.b]\nboard = \"unix\"\n"
        ));
        assert!(e.contains("already used by node `a`"), "{e}");
    }

    #[test]
    fn line_col_counts_characters() {
        assert_eq!(line_col("ab\ncäd", 6), (2, 3));
        assert_eq!(line_col("x", 0), (1, 1));
    }

    #[test]
    fn did_you_mean_suggests_only_close_names() {
        assert_eq!(
            did_you_mean("bord", ["board", "port"].into_iter()),
            " (did you mean `board`?)"
        );
        assert_eq!(did_you_mean("zzzzzz", ["board", "port"].into_iter()), "");
    }
}
