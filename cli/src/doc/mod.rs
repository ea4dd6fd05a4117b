//! Command docs kept on the host (`moat doc`, `moat cmd … --help`,
//! `mux.doc`): MicroPython keeps no docstrings and a node's flash is
//! precious, so `moat build` reads each frozen module's app classes
//! ([`extract`], CPython's own parser on the sources it freezes) and keeps
//! them in `docs.json` next to the build record. Nothing of it reaches the
//! node.
//!
//! A doc is looked up for what the node runs: its module table
//! (`sys.up.mods`: the firmware's `_hash` table and the files diff-update
//! put on it) names each module's hash, and the docs of exactly that
//! source are used: from any build record of the project, or, for a module
//! replaced by diff-update, from the project's current source when its
//! hash matches the uploaded file's. Otherwise the nearest docs are shown
//! with a note that they may be stale. Without the node, the node's latest
//! build is documented, and the answer says so.
//!
//! The JSON answer (`moat doc --json`, `mux.doc`) is one object:
//!
//! - `node`, `path` (the command path asked for, a list), `basis`: `node`
//!   (matched against what the node runs), `build` (the node was not
//!   reached: its latest build) or `mux` (the mux's own app);
//! - `class` (`module.Class` answering the path), `module`: `{name, hash,
//!   from: firmware|override|build|source, file}` (absent for the mux),
//!   `notes` (list of strings, possibly empty);
//! - a command: `command: {name, doc, params: [{name, default}], kw,
//!   cmd, stream, async}` (`default` null: required; `kw` the name of a
//!   `**kw` catch-all or null; `stream`: a native stream; `cmd` false: a
//!   stream only);
//! - an app or the node itself: `doc` (the class's) and `commands:
//!   [{path, summary, stream}]`, every command below it.

use crate::hash_table::{module_hash, HashTable};
use crate::modules::FrozenModule;
use crate::project::Project;
use crate::tools::{self, run_capture};
use crate::update::table::{Form, NodeTable, FROZEN};
use anyhow::{bail, Context};
use mux_runtime::message::PathElem;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value as Json};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The docs of a build, next to its `record.json`.
pub const DOCS_FILE: &str = "docs.json";

/// Bumped when `docs.json`'s meaning changes (old files are then rebuilt).
pub const FORMAT: u32 = 1;

/// The extraction script (run with `python3 -c`).
const SCRIPT: &str = include_str!("extract.py");

/// The class at a node's root (`ping`, `dir`, the built-in apps).
pub const ROOT_CLASS: &str = "root.Root";

/// One command: `cmd_NAME` and/or `stream_NAME`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CmdDoc {
    #[serde(default)]
    pub doc: Option<String>,
    /// `(name, default as source text)`; `None`: required.
    #[serde(default)]
    pub params: Vec<(String, Option<String>)>,
    /// The name of a `**kw` catch-all.
    #[serde(default)]
    pub kw: Option<String>,
    /// Has a `cmd_NAME`.
    #[serde(default)]
    pub cmd: bool,
    /// Has a `stream_NAME` (a native stream).
    #[serde(default)]
    pub stream: bool,
    #[serde(default, rename = "async")]
    pub is_async: bool,
}

/// One app class.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClassDoc {
    #[serde(default)]
    pub doc: Option<String>,
    /// Base classes as `module.Class`.
    #[serde(default)]
    pub bases: Vec<String>,
    #[serde(default)]
    pub cmds: BTreeMap<String, CmdDoc>,
    /// Sub-apps: name → `module.Class`.
    #[serde(default)]
    pub subs: BTreeMap<String, String>,
}

/// One module's docs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ModuleDocs {
    /// `sha256(source)[:8]` in hex, as in the `_hash` table.
    #[serde(default)]
    pub hash: String,
    #[serde(default)]
    pub doc: Option<String>,
    #[serde(default)]
    pub classes: BTreeMap<String, ClassDoc>,
    /// Why the module could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Reads the docs of `modules` (`(name, source file)`) with python3. The
/// hashes are left empty (the caller knows them).
pub fn extract(modules: &[(String, PathBuf)]) -> anyhow::Result<BTreeMap<String, ModuleDocs>> {
    if modules.is_empty() {
        return Ok(BTreeMap::new());
    }
    tools::require(&[tools::PYTHON3])?;
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(SCRIPT);
    for (name, path) in modules {
        cmd.arg(format!("{name}={}", path.display()));
    }
    let out = run_capture(&mut cmd).context("cannot read the modules' docs")?;
    serde_json::from_str(&out).context("unexpected output from the docs script")
}

/// The docs of one build (`docs.json`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DocsFile {
    pub format: u32,
    pub target: String,
    /// The digest of the firmware's `_hash` table (hex), as `sys.up.mods`
    /// reports it as `t`.
    pub table: String,
    /// Modules with app classes (or an `error`), by name.
    pub modules: BTreeMap<String, ModuleDocs>,
}

impl DocsFile {
    /// `None` when absent, unreadable or of another format.
    pub fn load(path: &Path) -> Option<DocsFile> {
        let text = std::fs::read_to_string(path).ok()?;
        let d: DocsFile = serde_json::from_str(&text).ok()?;
        (d.format == FORMAT).then_some(d)
    }

    /// Writes atomically.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_string_pretty(self)? + "\n")?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }
}

/// Writes `dir/docs.json` for a build freezing `frozen` (whose `_hash`
/// table is `table`), unless the one there already describes that table.
pub fn write_for_build(
    dir: &Path,
    target: &str,
    frozen: &[FrozenModule],
    table: &HashTable,
) -> anyhow::Result<()> {
    let digest = hex::encode(crate::update::table::digest(table));
    let path = dir.join(DOCS_FILE);
    if DocsFile::load(&path).is_some_and(|d| d.table == digest) {
        return Ok(());
    }
    let list: Vec<(String, PathBuf)> = frozen
        .iter()
        .filter(|m| m.source.extension().is_some_and(|e| e == "py"))
        .map(|m| (m.name.clone(), m.source.clone()))
        .collect();
    let mut modules = extract(&list)?;
    modules.retain(|_, m| !m.classes.is_empty() || m.error.is_some());
    for m in frozen {
        if let Some(d) = modules.get_mut(&m.name) {
            d.hash = hex::encode(m.hash);
        }
    }
    DocsFile {
        format: FORMAT,
        target: target.to_owned(),
        table: digest,
        modules,
    }
    .save(&path)
}

/// Where a module the node imports comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Frozen into the firmware the node runs.
    Firmware,
    /// A file on the node's filesystem (diff-update put it there).
    Override { file: String, form: Form },
    /// The node was not asked: the module as its latest build froze it.
    Build,
}

/// A module as the node imports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Effective {
    pub hash: String,
    pub origin: Origin,
}

/// Each module the node imports, from where (its search order: a file in
/// an earlier folder beats the frozen copy; `.py` before `.mpy`).
pub fn effective(table: &NodeTable) -> BTreeMap<String, Effective> {
    let mut names: Vec<String> = table.frozen.iter().map(|(n, _)| n.to_owned()).collect();
    for f in &table.files {
        if let Some((m, _)) = f.module().filter(|_| !f.is_temp()) {
            names.push(m.to_owned());
        }
    }
    let mut out = BTreeMap::new();
    for m in names {
        if out.contains_key(&m) {
            continue;
        }
        let found = table.search.iter().find_map(|dir| {
            if dir == FROZEN {
                return table.frozen.get(&m).map(|h| Effective {
                    hash: hex::encode(h),
                    origin: Origin::Firmware,
                });
            }
            [Form::Py, Form::Mpy].into_iter().find_map(|form| {
                table
                    .files
                    .iter()
                    .find(|f| f.split().0 == dir && f.module() == Some((m.as_str(), form)))
                    .map(|f| Effective {
                        hash: hex::encode(f.hash),
                        origin: Origin::Override {
                            file: f.path.clone(),
                            form,
                        },
                    })
            })
        });
        if let Some(e) = found {
            out.insert(m, e);
        }
    }
    out
}

/// What is known about a node when its docs are looked up.
#[derive(Clone, Debug, Default)]
pub struct NodeState {
    /// Its module table; `None`: the node was not reached.
    pub table: Option<NodeTable>,
    /// Its config's `apps` (name → `module.Class`).
    pub apps: BTreeMap<String, String>,
    /// Why the node was not asked (shown as a note).
    pub unreached: Option<String>,
}

/// Asks the node through `client` for its module table and its apps.
pub async fn query(
    project: &Project,
    node: &str,
    client: &crate::client::Client,
) -> anyhow::Result<NodeState> {
    let known = project
        .node(node)
        .and_then(|n| crate::update::apply::built_table(project, n));
    let table = crate::update::apply::node_table(client, known).await?;
    let apps = match client
        .call_names(
            &["cfg", "r"],
            mux_runtime::Value::map([("p", mux_runtime::Value::Array(vec!["apps".into()]))]),
        )
        .await
    {
        Ok(v) => apps_of(&v),
        Err(_) => None,
    };
    Ok(NodeState {
        table: Some(table),
        apps: apps.unwrap_or_else(|| configured_apps(project, node)),
        unreached: None,
    })
}

/// The apps `moat.toml` gives the node.
pub fn configured_apps(project: &Project, node: &str) -> BTreeMap<String, String> {
    project
        .node(node)
        .and_then(|n| n.config().get("apps").and_then(apps_of))
        .unwrap_or_default()
}

fn apps_of(v: &mux_runtime::Value) -> Option<BTreeMap<String, String>> {
    let mux_runtime::Value::Map(pairs) = v else {
        return None;
    };
    Some(
        pairs
            .iter()
            .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), v.as_str()?.to_owned())))
            .collect(),
    )
}

/// The docs a lookup draws on: every build record's `docs.json` of the
/// project, and the current sources (project apps, the embedded runtime)
/// read on demand.
pub struct Library<'p> {
    project: &'p Project,
    /// The node's latest build.
    build: Option<DocsFile>,
    /// (module, hash) → docs, from every build of the project.
    known: HashMap<(String, String), ModuleDocs>,
    /// Current sources read so far: module → docs (hash set).
    current: HashMap<String, Option<ModuleDocs>>,
}

impl<'p> Library<'p> {
    pub fn load(project: &'p Project, node: &str) -> Library<'p> {
        let builds = project.state_dir().join("build");
        let mut known = HashMap::new();
        for e in std::fs::read_dir(&builds).into_iter().flatten().flatten() {
            if let Some(d) = DocsFile::load(&e.path().join(DOCS_FILE)) {
                for (name, m) in d.modules {
                    known.insert((name, m.hash.clone()), m);
                }
            }
        }
        Library {
            project,
            build: DocsFile::load(&builds.join(node).join(DOCS_FILE)),
            known,
            current: HashMap::new(),
        }
    }

    /// The module's current source: a project app folder's file, else the
    /// node runtime embedded in this moat.
    fn current_source(&self, module: &str) -> Option<(String, Vec<u8>)> {
        let rel = module.replace('.', "/");
        for d in self.project.app_dirs() {
            for p in [
                d.join(format!("{rel}.py")),
                d.join(&rel).join("__init__.py"),
            ] {
                if let Ok(b) = std::fs::read(&p) {
                    return Some((p.display().to_string(), b));
                }
            }
        }
        crate::embedded::NODE_RUNTIME
            .iter()
            .find(|(p, _)| *p == format!("{rel}.py"))
            .map(|(p, b)| (format!("(moat's runtime) {p}"), b.to_vec()))
    }

    /// Docs of the module's current source (read once).
    fn current(&mut self, module: &str) -> Option<ModuleDocs> {
        if let Some(c) = self.current.get(module) {
            return c.clone();
        }
        let docs = self.current_source(module).and_then(|(_, bytes)| {
            let dir = tempfile::tempdir().ok()?;
            let file = dir.path().join("m.py");
            std::fs::write(&file, &bytes).ok()?;
            let mut d = extract(&[(module.to_owned(), file)])
                .map_err(|e| tracing::warn!("docs of {module}: {e:#}"))
                .ok()?
                .remove(module)?;
            d.hash = hex::encode(module_hash(&bytes));
            Some(d)
        });
        self.current.insert(module.to_owned(), docs.clone());
        docs
    }
}

/// A module's docs as used for one answer, with where they came from.
#[derive(Clone, Debug)]
struct Found {
    docs: ModuleDocs,
    info: Json,
}

/// Looks up docs for the modules a node runs.
pub struct Lookup<'l, 'p> {
    lib: &'l mut Library<'p>,
    /// Each module as the node imports it; offline: as the build froze it.
    modules: BTreeMap<String, Effective>,
    cache: HashMap<String, Option<Found>>,
    pub notes: Vec<String>,
}

impl<'l, 'p> Lookup<'l, 'p> {
    pub fn new(lib: &'l mut Library<'p>, state: &NodeState) -> Lookup<'l, 'p> {
        let mut notes = vec![];
        let modules = match &state.table {
            Some(t) => {
                if let Some(b) = &lib.build {
                    if b.table != hex::encode(crate::update::table::digest(&t.frozen)) {
                        notes.push(
                            "the node runs firmware other than its latest build: modules are \
                             matched by hash"
                                .to_owned(),
                        );
                    }
                }
                effective(t)
            }
            None => {
                notes.push(match (&state.unreached, &lib.build) {
                    (Some(why), Some(_)) => {
                        format!("node not reached ({why}): docs of its latest build")
                    }
                    (Some(why), None) => format!(
                        "node not reached ({why}) and never built here: docs of the current sources"
                    ),
                    (None, _) => "docs of the node's latest build".to_owned(),
                });
                lib.build
                    .iter()
                    .flat_map(|b| &b.modules)
                    .map(|(n, m)| {
                        (
                            n.clone(),
                            Effective {
                                hash: m.hash.clone(),
                                origin: Origin::Build,
                            },
                        )
                    })
                    .collect()
            }
        };
        Lookup {
            lib,
            modules,
            cache: HashMap::new(),
            notes,
        }
    }

    fn module(&mut self, name: &str) -> Option<Found> {
        if let Some(f) = self.cache.get(name) {
            return f.clone();
        }
        let found = self.find(name);
        self.cache.insert(name.to_owned(), found.clone());
        found
    }

    fn find(&mut self, name: &str) -> Option<Found> {
        let info = |docs: &ModuleDocs, from: &str, file: Option<&str>| {
            let mut i = json!({"name": name, "hash": docs.hash, "from": from});
            if let Some(f) = file {
                i["file"] = json!(f);
            }
            i
        };
        let Some(eff) = self.modules.get(name).cloned() else {
            // Not on the node (or not in the build): the current source.
            let docs = self.lib.current(name)?;
            let i = info(&docs, "source", None);
            return Some(Found { docs, info: i });
        };
        let (from, file) = match &eff.origin {
            Origin::Firmware => ("firmware", None),
            Origin::Override { file, .. } => ("override", Some(file.as_str())),
            Origin::Build => ("build", None),
        };
        if let Some(docs) = self.lib.known.get(&(name.to_owned(), eff.hash.clone())) {
            let docs = docs.clone();
            let i = info(&docs, from, file);
            return Some(Found { docs, info: i });
        }
        // Not built here: an uploaded source is matched with the project's.
        let current = self.lib.current(name);
        if let Some(docs) = current.as_ref().filter(|d| d.hash == eff.hash) {
            let i = info(docs, from, file);
            return Some(Found {
                docs: docs.clone(),
                info: i,
            });
        }
        let fallback = current.or_else(|| {
            self.lib
                .build
                .as_ref()
                .and_then(|b| b.modules.get(name).cloned())
        })?;
        let why = match &eff.origin {
            Origin::Override {
                form: Form::Mpy, ..
            } => "was uploaded compiled (.mpy)".to_owned(),
            _ => format!("runs source {}", eff.hash),
        };
        self.notes.push(format!(
            "module {name} {why}; documented from source {}: may be stale",
            fallback.hash
        ));
        let i = info(&fallback, "source", file);
        Some(Found {
            docs: fallback,
            info: i,
        })
    }

    /// `module.Class` with its bases' commands and sub-apps merged in.
    fn class(&mut self, reference: &str) -> Option<(ClassDoc, Json)> {
        self.class_depth(reference, 0)
    }

    fn class_depth(&mut self, reference: &str, depth: u32) -> Option<(ClassDoc, Json)> {
        let (module, class) = reference.rsplit_once('.')?;
        let found = self.module(module)?;
        let own = found.docs.classes.get(class)?.clone();
        let mut merged = ClassDoc {
            doc: own.doc.clone(),
            bases: own.bases.clone(),
            ..ClassDoc::default()
        };
        if depth < 8 {
            for b in &own.bases {
                if let Some((base, _)) = self.class_depth(b, depth + 1) {
                    merged.cmds.extend(base.cmds);
                    merged.subs.extend(base.subs);
                }
            }
        }
        merged.cmds.extend(own.cmds);
        merged.subs.extend(own.subs);
        Some((merged, found.info))
    }
}

fn path_json(path: &[PathElem]) -> Json {
    Json::Array(
        path.iter()
            .map(|e| match e {
                PathElem::Name(s) => json!(s),
                PathElem::Index(i) => json!(i),
            })
            .collect(),
    )
}

fn command_json(name: &str, c: &CmdDoc) -> Json {
    json!({
        "name": name,
        "doc": c.doc,
        "params": c.params.iter().map(|(n, d)| json!({"name": n, "default": d})).collect::<Vec<_>>(),
        "kw": c.kw,
        "cmd": c.cmd,
        "stream": c.stream,
        "async": c.is_async,
    })
}

/// A doc's summary: its first sentence (of the first paragraph), at most
/// [`SUMMARY_MAX`] characters.
pub fn summary(doc: Option<&str>) -> String {
    let para: Vec<&str> = doc
        .unwrap_or("")
        .lines()
        .map(str::trim)
        .skip_while(|l| l.is_empty())
        .take_while(|l| !l.is_empty())
        .collect();
    let text = para.join(" ");
    let first = match text.find(". ") {
        Some(at) => &text[..=at],
        None => text.as_str(),
    };
    if first.chars().count() <= SUMMARY_MAX {
        return first.to_owned();
    }
    let cut: String = first.chars().take(SUMMARY_MAX - 1).collect();
    format!("{}…", cut.trim_end())
}

/// Longest summary in a listing.
pub const SUMMARY_MAX: usize = 100;

/// The doc of `path` on `node` (see the module's docs for the shape).
/// An empty path documents the node itself.
pub fn describe(
    project: &Project,
    node: &str,
    path: &[PathElem],
    state: &NodeState,
) -> anyhow::Result<Json> {
    let mut lib = Library::load(project, node);
    let mut look = Lookup::new(&mut lib, state);
    let Some((root, root_info)) = look.class(ROOT_CLASS) else {
        bail!("no docs of the node runtime ({ROOT_CLASS}): build the node with `moat build`");
    };
    let mut subs = root.subs.clone();
    for (k, v) in &state.apps {
        subs.insert(k.clone(), v.clone());
    }
    let (mut class, mut cref, mut info) = (root, ROOT_CLASS.to_owned(), root_info);
    let basis = if state.table.is_some() {
        "node"
    } else {
        "build"
    };
    let mut out = json!({"node": node, "path": path_json(path), "basis": basis});
    for (j, e) in path.iter().enumerate() {
        let last = j + 1 == path.len();
        let shown = crate::args::show_path(&path[..=j]);
        let name = match e {
            PathElem::Name(s) => s.as_str(),
            PathElem::Index(_) => bail!(
                "{shown}: sub-apps indexed by number are made at run time and have no docs here"
            ),
        };
        if last {
            if let Some(c) = class.cmds.get(name) {
                out["class"] = json!(cref);
                out["module"] = info;
                out["command"] = command_json(name, c);
                out["notes"] = json!(look.notes);
                return Ok(out);
            }
        }
        let Some(next) = subs.get(name).cloned() else {
            let mut have: Vec<&str> = class.cmds.keys().map(String::as_str).collect();
            have.extend(subs.keys().map(String::as_str));
            bail!(
                "{shown}: no such command or app in {cref} (it has: {})",
                have.join(", ")
            );
        };
        let Some((c, i)) = look.class(&next) else {
            bail!("{shown}: no docs of {next} (not built here, and not in the project's sources)");
        };
        subs = c.subs.clone();
        (class, cref, info) = (c, next, i);
    }
    // An app (or the node): everything below it.
    let mut commands = vec![];
    let mut seen = vec![cref.clone()];
    list(&mut look, &class, &subs, path, &mut commands, &mut seen);
    out["class"] = json!(cref);
    out["module"] = info;
    out["doc"] = json!(class.doc);
    out["commands"] = Json::Array(commands);
    out["notes"] = json!(look.notes);
    Ok(out)
}

fn list(
    look: &mut Lookup,
    class: &ClassDoc,
    subs: &BTreeMap<String, String>,
    at: &[PathElem],
    out: &mut Vec<Json>,
    seen: &mut Vec<String>,
) {
    for (name, c) in &class.cmds {
        if name == "dir" && !at.is_empty() {
            continue; // every app has it: listed once, at the root
        }
        let mut p = at.to_vec();
        p.push(PathElem::Name(name.clone()));
        out.push(json!({"path": path_json(&p), "summary": summary(c.doc.as_deref()), "stream": c.stream}));
    }
    for (name, r) in subs {
        if seen.contains(r) || seen.len() > 6 {
            continue;
        }
        let Some((c, _)) = look.class(r) else {
            continue;
        };
        let mut p = at.to_vec();
        p.push(PathElem::Name(name.clone()));
        seen.push(r.clone());
        let s = c.subs.clone();
        list(look, &c, &s, &p, out, seen);
        seen.pop();
    }
}

/// The doc of the mux's own app (`path` after `mux`; empty: all of it).
pub fn describe_mux(path: &[PathElem]) -> anyhow::Result<Json> {
    use mux_runtime::mux::apps::MUX_DOCS;
    let cmd = |d: &mux_runtime::mux::apps::MuxCommandDoc| CmdDoc {
        doc: Some(d.doc.to_owned()),
        params: d
            .params
            .iter()
            .map(|(n, v)| ((*n).to_owned(), v.map(str::to_owned)))
            .collect(),
        kw: None,
        cmd: true,
        stream: d.stream,
        is_async: true,
    };
    let mut out = json!({
        "node": crate::client::MUX_APP,
        "path": path_json(path),
        "basis": "mux",
        "class": "mux",
        "notes": [],
    });
    match path {
        [] => {
            out["doc"] = json!("The mux's own app: its nodes, consoles and docs.");
            out["commands"] = MUX_DOCS
                .iter()
                .map(|d| {
                    json!({"path": [d.name], "summary": summary(Some(d.doc)), "stream": d.stream})
                })
                .collect();
        }
        [PathElem::Name(n)] => {
            let Some(d) = MUX_DOCS.iter().find(|d| d.name == n) else {
                bail!(
                    "mux.{n}: the mux app has no such command (it has: {})",
                    MUX_DOCS.map(|d| d.name).join(", ")
                );
            };
            out["command"] = command_json(n, &cmd(d));
        }
        _ => bail!(
            "{}: the mux app has commands only, no sub-apps",
            crate::args::show_path(path)
        ),
    }
    Ok(out)
}

/// `moat doc`'s text for a [`describe`] answer.
pub fn render(doc: &Json) -> String {
    let s = |v: &Json| v.as_str().unwrap_or("").to_owned();
    let node = s(&doc["node"]);
    let path: Vec<String> = doc["path"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e.as_str().map_or_else(|| e.to_string(), str::to_owned))
        .collect();
    let dotted = path.join(".");
    let mut out = String::new();
    let origin = match doc["basis"].as_str() {
        Some("mux") => "the mux's own app".to_owned(),
        _ => {
            let m = &doc["module"];
            let from = match m["from"].as_str() {
                Some("firmware") => "in the firmware the node runs".to_owned(),
                Some("override") => format!("uploaded as {}", s(&m["file"])),
                Some("build") => "as last built".to_owned(),
                _ => "from the current source".to_owned(),
            };
            format!(
                "{} (module {} {}, {from})",
                s(&doc["class"]),
                s(&m["name"]),
                s(&m["hash"])
            )
        }
    };
    if let Some(c) = doc.get("command") {
        let params: Vec<String> = c["params"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| match p["default"].as_str() {
                Some(d) => format!("{}={d}", s(&p["name"])),
                None => s(&p["name"]),
            })
            .chain(c["kw"].as_str().map(|k| format!("**{k}")))
            .collect();
        out.push_str(&format!("{node} {dotted}({})\n", params.join(", ")));
        match c["doc"].as_str() {
            Some(d) => {
                for l in d.lines() {
                    out.push_str(&format!("    {l}\n").replace("    \n", "\n"));
                }
            }
            None => out.push_str("    (no doc)\n"),
        }
        let streams = match (c["stream"].as_bool(), c["cmd"].as_bool()) {
            (Some(true), Some(false)) => "only as a stream (moat cmd … --stream MS)",
            (Some(true), _) => "yes, natively (moat cmd … --stream MS)",
            _ => "no stream of its own (--stream MS calls it every MS)",
        };
        out.push_str(&format!("  streams: {streams}\n"));
        out.push_str(&format!("  from: {origin}\n"));
    } else {
        let title = if dotted.is_empty() {
            node.clone()
        } else {
            format!("{node} {dotted}")
        };
        out.push_str(&format!("{title}: {origin}\n"));
        if let Some(d) = doc["doc"].as_str() {
            for l in d.lines() {
                out.push_str(&format!("    {l}\n").replace("    \n", "\n"));
            }
        }
        let rows: Vec<(String, String)> = doc["commands"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                let p: Vec<String> = c["path"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|e| e.as_str().map_or_else(|| e.to_string(), str::to_owned))
                    .collect();
                let mut name = p.join(".");
                if c["stream"].as_bool() == Some(true) {
                    name.push_str(" [stream]");
                }
                (name, s(&c["summary"]))
            })
            .collect();
        let width = rows.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
        for (n, sm) in rows {
            out.push_str(format!("  {n:width$}  {sm}").trim_end());
            out.push('\n');
        }
    }
    for n in doc["notes"].as_array().into_iter().flatten() {
        out.push_str(&format!("  note: {}\n", s(n)));
    }
    out
}

#[cfg(test)]
mod tests;
