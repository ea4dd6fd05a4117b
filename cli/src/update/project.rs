//! The modules a node's firmware would freeze if it were built now: the
//! frozen manifest rendered as `moat build` renders it (the node runtime
//! embedded in this binary, the project's app folders, MicroPython's
//! asyncio, the port's modules), listed by MicroPython's own manifest tool
//! and hashed. No compiler runs; the MicroPython tree comes from the cache
//! (fetched once if missing).

use crate::build::Target;
use crate::hash_table::ModuleHash;
use crate::manifest::Node;
use crate::modules::{self, ManifestVars};
use crate::project::Project;
use crate::source::{self, Cache, SourceSpec, SourceTree};
use crate::template::Templates;
use anyhow::{bail, Context};
use std::collections::BTreeSet;
use std::path::PathBuf;

/// One module of the project.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Module {
    /// Dotted name.
    pub name: String,
    pub source: PathBuf,
    /// `sha256(source)[:8]`.
    pub hash: ModuleHash,
    /// From one of the project's app folders (else: moat's runtime or
    /// MicroPython's).
    pub from_apps: bool,
    /// A package or a module inside one: cannot be replaced by a file of
    /// the node's flat module folders.
    pub in_package: bool,
}

/// The project's modules for one node, and the MicroPython tree (whose
/// mpy-cross `--mpy` uses).
#[derive(Clone, Debug)]
pub struct ProjectModules {
    pub modules: Vec<Module>,
    pub tree: SourceTree,
}

impl ProjectModules {
    /// Names of modules from the app folders.
    pub fn app_names(&self) -> BTreeSet<String> {
        self.modules
            .iter()
            .filter(|m| m.from_apps)
            .map(|m| m.name.clone())
            .collect()
    }

    /// Names of every other module (runtime, MicroPython's).
    pub fn runtime_names(&self) -> BTreeSet<String> {
        self.modules
            .iter()
            .filter(|m| !m.from_apps)
            .map(|m| m.name.clone())
            .collect()
    }
}

/// Collects `node`'s modules; `notes` hears about a MicroPython fetch.
pub fn collect(
    project: &Project,
    node: &Node,
    notes: &mut dyn FnMut(&str),
) -> anyhow::Result<ProjectModules> {
    let mut spec = SourceSpec::from(&project.manifest.micropython);
    if let SourceSpec::Path(p) = &spec {
        spec = SourceSpec::Path(project.root.join(p));
    }
    let cache = Cache::from_env()?;
    let tree = source::provide(&spec, &[], &cache, notes)?;
    let target = Target {
        name: node.name.clone(),
        board: project.board_of(node).clone(),
        node: Some(node.clone()),
    };
    let board = &target.board;
    let app_dirs = project.app_dirs();
    for d in &app_dirs {
        if !d.is_dir() {
            bail!(
                "[apps] paths names {}, which is not a folder; create it or remove it from moat.toml",
                d.display()
            );
        }
    }
    // Scratch copies of what `moat build` stages under .moat/build/ (so a
    // build running meanwhile is not disturbed).
    let gen = tempfile::Builder::new()
        .prefix("moat-update-")
        .tempdir()
        .context("cannot create a temporary folder")?;
    let runtime_dir = gen.path().join("runtime");
    let hash_dir = gen.path().join("hash");
    let lib_dir = gen.path().join("mpy-lib");
    modules::stage_runtime(&runtime_dir)?;
    modules::write_if_changed(&lib_dir.join("README.md"), b"")?;
    modules::write_if_changed(&hash_dir.join("_hash.py"), b"hashes = {}\n")?;
    let port_dir = tree.root.join("ports").join(&board.port);
    if !port_dir.is_dir() {
        bail!(
            "board {}: the MicroPython tree {} has no port `{}`",
            board.name,
            tree.root.display(),
            board.port
        );
    }
    let board_dir = board
        .board
        .as_ref()
        .map(|b| port_dir.join("boards").join(b));
    // The same context `moat build` renders the manifest with.
    let ctx = serde_json::json!({
        "target": target.name,
        "node": node.name,
        "board": board,
        "runtime_dir": runtime_dir,
        "app_dirs": app_dirs,
        "hash_dir": hash_dir,
        "port_modules": port_dir.join("modules/_boot.py").is_file(),
        "micropython": tree.root,
    });
    let templates = Templates::load(Some(&project.root))?;
    let manifest_text = templates.render("manifest.py.j2", &ctx)?;
    let manifest = gen.path().join("manifest.py");
    std::fs::write(&manifest, manifest_text)?;
    let vars = ManifestVars {
        mpy_dir: tree.root.clone(),
        port_dir,
        board_dir,
        mpy_lib_dir: lib_dir,
    };
    let frozen = modules::frozen_modules(&manifest, &vars)?;
    let modules = frozen
        .into_iter()
        .map(|m| {
            let from_apps = app_dirs.iter().any(|d| m.source.starts_with(d));
            let in_package =
                m.name.contains('.') || m.source.file_name().is_some_and(|f| f == "__init__.py");
            let source = if m.source.starts_with(&runtime_dir) {
                // The staged copy goes away with `gen`: name the module instead.
                PathBuf::from(format!("<moat runtime>/{}.py", m.name))
            } else {
                m.source
            };
            Module {
                name: m.name,
                source,
                hash: m.hash,
                from_apps,
                in_package,
            }
        })
        .collect();
    Ok(ProjectModules { modules, tree })
}

/// The bytes of a module's source (the runtime's from this binary).
pub fn source_bytes(m: &Module) -> anyhow::Result<Vec<u8>> {
    if let Ok(rel) = m.source.strip_prefix("<moat runtime>") {
        let rel = rel.to_string_lossy();
        return crate::embedded::NODE_RUNTIME
            .iter()
            .find(|(p, _)| *p == rel)
            .map(|(_, b)| b.to_vec())
            .with_context(|| format!("the runtime module {} is not in this moat", m.name));
    }
    std::fs::read(&m.source).with_context(|| format!("cannot read {}", m.source.display()))
}
