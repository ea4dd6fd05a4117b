//! The modules a node's firmware would freeze if it were built now: the
//! frozen manifest rendered as `moat build` renders it (the node runtime
//! embedded in this binary, the project's app folders, MicroPython's
//! asyncio, the port's modules), listed by MicroPython's own manifest tool
//! and hashed. No compiler runs; the MicroPython tree comes from the cache
//! (fetched once if missing).

use crate::build::{stage_manifest, StagedManifest, Target};
use crate::hash_table::ModuleHash;
use crate::manifest::Node;
use crate::modules;
use crate::project::Project;
use crate::source::{self, Cache, SourceSpec, SourceTree};
use crate::template::Templates;
use anyhow::Context;
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
    let app_dirs = crate::build::app_dirs(project)?;
    // The board's patched tree, as `moat build` uses it.
    let tree = crate::patches::tree_for_board(&tree, &target.board, &cache, notes)?;
    // Scratch copies of what `moat build` stages under .moat/build/ (so a
    // build running meanwhile is not disturbed).
    let gen = tempfile::Builder::new()
        .prefix("moat-update-")
        .tempdir()
        .context("cannot create a temporary folder")?;
    let runtime_dir = gen.path().join("runtime");
    let templates = Templates::load(Some(&project.root))?;
    let StagedManifest { manifest, vars, .. } =
        stage_manifest(gen.path(), &tree, &target, &app_dirs, &templates)?;
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
