//! Firmware builds: for each target (a node, or a board without nodes)
//!
//! 1. stage the embedded node runtime and render the frozen manifest;
//! 2. ask MicroPython's manifest tool what it freezes, hash every module
//!    and render the `_hash` module;
//! 3. compare the inputs with the last build record: equal inputs and an
//!    intact firmware mean no compiler run at all;
//! 4. otherwise check the board's toolchain (what is missing fails here,
//!    with everything before generated), run the port's build into a
//!    `BUILD=` folder of the project, copy the artefacts out and write the
//!    record.
//!
//! Layout of `.moat/build/<target>/`: `gen/` (manifest.py, runtime/,
//! hash/_hash.py, mpy-lib/), `port-<key>/` (the port's build folder),
//! `firmware/` (artefacts), `build.log`, `record.json`, `docs.json` (the
//! command docs, [`crate::doc`]), `moat.cfg`.

pub mod cmake;
pub mod progress;
pub mod record;

use crate::board::{Board, BuildSystem};
use crate::hash_table::HashTable;
use crate::manifest::{MicroPython, Node};
use crate::modules::{self, FrozenModule, ManifestVars};
use crate::project::Project;
use crate::source::{self, cache, Cache, SourceSpec, SourceTree};
use crate::template::Templates;
use crate::toolchains::Toolchains;
use crate::tools::{self, run_logged};
use anyhow::{bail, Context};
use progress::{is_step_line, Progress};
use record::{file_sha256, sha256_hex, Record};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Steps assumed for a first compile (a unix build prints about this many).
const FIRST_BUILD_STEPS: u64 = 260;

/// What to build: a node, or a generic firmware for a board.
#[derive(Debug, Clone)]
pub struct Target {
    /// The node's name, or `_board-<board>` for a generic firmware.
    pub name: String,
    pub board: Board,
    pub node: Option<Node>,
}

/// The targets `moat build` builds for the given selection.
pub fn select(
    project: &Project,
    node: Option<&str>,
    board: Option<&str>,
) -> anyhow::Result<Vec<Target>> {
    let nodes = &project.manifest.nodes;
    let names = || {
        nodes
            .iter()
            .map(|n| n.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let for_node = |n: &Node| Target {
        name: n.name.clone(),
        board: project.board_of(n).clone(),
        node: Some(n.clone()),
    };
    match (node, board) {
        (Some(_), Some(_)) => bail!("give either --node or --board, not both"),
        (Some(name), None) => {
            let n = project.node(name).with_context(|| {
                format!("no node `{name}` in this project; its nodes: {}", names())
            })?;
            Ok(vec![for_node(n)])
        }
        (None, Some(b)) => {
            let Some(board) = project.boards.get(b) else {
                bail!(
                    "unknown board `{b}`; known boards: {}",
                    project.boards.names().collect::<Vec<_>>().join(", ")
                );
            };
            let on_board: Vec<Target> = nodes
                .iter()
                .filter(|n| n.board == b)
                .map(for_node)
                .collect();
            if on_board.is_empty() {
                Ok(vec![Target {
                    name: format!("_board-{b}"),
                    board: board.clone(),
                    node: None,
                }])
            } else {
                Ok(on_board)
            }
        }
        (None, None) => {
            if nodes.is_empty() {
                bail!("the project has no nodes; add a [nodes.NAME] table to moat.toml or use --board");
            }
            Ok(nodes.iter().map(for_node).collect())
        }
    }
}

/// One built (or found up to date) firmware.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub target: String,
    pub node: Option<String>,
    pub board: String,
    /// The main firmware file.
    pub firmware: PathBuf,
    pub firmware_sha256: String,
    pub modules: HashTable,
    /// Whether the compiler ran.
    pub rebuilt: bool,
    /// The target's folder under `.moat/build/`.
    pub dir: PathBuf,
}

impl Outcome {
    /// The `moat build --json` object.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "node": self.node.as_deref().unwrap_or(&self.target),
            "board": self.board,
            "firmware": self.firmware,
            "firmware_sha256": self.firmware_sha256,
            "modules": self.modules.to_json(),
            "rebuilt": self.rebuilt,
        })
    }
}

/// A build failure at the compiler step for lack of tools, after the
/// manifest and `_hash` were generated.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot compile `{target}` for board {board}, the build stops before make:{missing}\n  generated so far: {manifest} and {hash_module}"
)]
pub struct ToolchainMissing {
    pub target: String,
    pub board: String,
    /// Each missing item with its install hint, a `\n  - ` before each.
    pub missing: String,
    pub manifest: String,
    pub hash_module: String,
}

/// Builds targets of one project (sharing the MicroPython tree).
pub struct Builder<'p> {
    project: &'p Project,
    cache: Cache,
    templates: Templates,
    toolchains: Toolchains,
    source: Option<SourceTree>,
}

impl From<&MicroPython> for SourceSpec {
    fn from(m: &MicroPython) -> Self {
        match m {
            MicroPython::Version(v) => SourceSpec::Version(v.clone()),
            MicroPython::Path(p) => SourceSpec::Path(p.clone()),
            MicroPython::Git { url, rev } => SourceSpec::Git {
                url: url.clone(),
                rev: rev.clone(),
            },
        }
    }
}

impl<'p> Builder<'p> {
    pub fn new(project: &'p Project, cache: Cache) -> anyhow::Result<Self> {
        Ok(Builder {
            project,
            cache,
            templates: Templates::load(Some(&project.root))?,
            toolchains: Toolchains::load(Some(&project.root))?,
            source: None,
        })
    }

    /// The project's MicroPython tree, provided on first use.
    fn source(&mut self, progress: &mut dyn Progress) -> anyhow::Result<SourceTree> {
        if let Some(s) = &self.source {
            return Ok(s.clone());
        }
        let mut spec = SourceSpec::from(&self.project.manifest.micropython);
        if let SourceSpec::Path(p) = &spec {
            spec = SourceSpec::Path(self.project.root.join(p));
        }
        let tree = source::provide(&spec, &[], &self.cache, &mut |m| {
            progress.note("micropython", m)
        })?;
        self.source = Some(tree.clone());
        Ok(tree)
    }

    /// Builds one target.
    pub fn build(
        &mut self,
        target: &Target,
        progress: &mut dyn Progress,
    ) -> anyhow::Result<Outcome> {
        let tree = self.source(progress)?;
        let dir = self.project.state_dir().join("build").join(&target.name);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let _lock = cache::lock(&dir.join(".lock"))?;
        let board = &target.board;
        // The board's MicroPython patches (micropython-patches/), if any:
        // then it builds from a patched copy of the tree.
        let tree = crate::patches::tree_for_board(&tree, board, &self.cache, &mut |m| {
            progress.note("micropython", m)
        })?;

        // 1. Stage the runtime, render the manifest.
        let gen = dir.join("gen");
        let StagedManifest {
            manifest,
            vars,
            mut ctx,
            hash_file,
        } = stage_manifest(&gen, &tree, target, &self.app_dirs()?, &self.templates)?;
        let (port_dir, lib_dir) = (vars.port_dir.clone(), vars.mpy_lib_dir.clone());

        // 2. What gets frozen, hashed; the `_hash` module.
        let frozen: Vec<FrozenModule> =
            modules::frozen_modules_checked(&manifest, &vars, &hash_file)?;
        // Before compiling anything: the project's own modules compile, and
        // the node's apps name modules and classes that are frozen.
        let app_dirs = self.app_dirs()?;
        let own: Vec<&Path> = frozen
            .iter()
            .map(|m| m.source.as_path())
            .filter(|p| app_dirs.iter().any(|d| p.starts_with(d)))
            .collect();
        crate::check::compile(&tree.mpy_cross, &self.project.root, &own)?;
        if let Some(node) = &target.node {
            let listed: Vec<crate::check::Frozen> = frozen
                .iter()
                .map(|m| crate::check::Frozen {
                    name: &m.name,
                    source: &m.source,
                })
                .collect();
            // A node that runs here may have modules in its own folder.
            let local = (board.flash == crate::board::Flash::Local)
                .then(|| crate::local_node::node_dir(self.project, &node.name));
            crate::check::apps(node, &listed, local.as_deref(), crate::check::read_file)?;
        }
        let table = modules::hash_table(&frozen);
        ctx["modules"] = serde_json::to_value(table.template_rows())?;
        let hash_text = self.templates.render("_hash.py.j2", &ctx)?;
        modules::write_if_changed(&hash_file, hash_text.as_bytes())?;
        // The command docs (`docs.json`, for `moat doc`): kept here, never
        // on the node. Not worth failing a build over.
        if let Err(e) = crate::doc::write_for_build(&dir, &target.name, &frozen, &table) {
            progress.note(&target.name, &format!("no command docs: {e:#}"));
        }

        if let Some(node) = &target.node {
            let cfg = mux_runtime::msgpack::to_vec(&node.config());
            modules::write_if_changed(&dir.join("moat.cfg"), &cfg)?;
        }

        // The toolchain as configured (checked fully before compiling,
        // below; an up-to-date firmware needs none). A usable SDK folder is
        // handed to the port.
        let tc = self.toolchains.for_board(board);
        let (sdk_dir, missing) = board.check(Some(&tree.root), &tc);

        // 3. Up to date?
        let mut build_args: Vec<String> = vec![];
        if let Some(b) = &board.board {
            build_args.push(format!("BOARD={b}"));
        }
        if let Some(v) = &board.variant {
            build_args.push(format!("VARIANT={v}"));
        }
        build_args.extend(board.vars.iter().map(|(k, v)| format!("{k}={v}")));
        if let (Some(var), Some(dir)) = (
            board.sdk.as_ref().and_then(|s| s.make_var.as_ref()),
            &sdk_dir,
        ) {
            build_args.push(format!("{var}={}", dir.path.display()));
        }
        build_args.push(format!("MPY_LIB_DIR={}", lib_dir.display()));
        build_args.push(format!("FROZEN_MANIFEST={}", manifest.display()));
        // The native module (`_moat`), a user C module in every firmware.
        let (cmods, native_sha256) = stage_native(&gen.join("cmods"))?;
        build_args.push(format!(
            "USER_C_MODULES={}",
            match board.build {
                BuildSystem::Cmake => cmods.join("micropython.cmake"),
                _ => cmods,
            }
            .display()
        ));
        // Paths of this machine must not reach the firmware (debug info,
        // hence the build id): map them to fixed names, so a fresh checkout
        // anywhere builds the same bytes. GCC applies the last matching
        // map: most specific last. `{BUILD}` is the port's build folder,
        // named below after all the variables.
        if port_takes_cflags_extra(&port_dir) {
            let maps = [
                (tree.root.display().to_string(), "/moat/micropython"),
                (dir.display().to_string(), "/moat/target"),
                ("{BUILD}".to_string(), "/moat/build"),
            ]
            .map(|(from, to)| format!("-ffile-prefix-map={from}={to}"))
            .join(" ");
            match build_args
                .iter_mut()
                .find(|a| a.starts_with("CFLAGS_EXTRA="))
            {
                Some(a) => *a = format!("{a} {maps}"),
                None => build_args.push(format!("CFLAGS_EXTRA={maps}")),
            }
        }
        // A fresh BUILD= folder whenever a variable changes (make does not
        // rebuild objects on flag changes).
        let key = sha256_hex(format!("{}\n{}", tree.id, build_args.join("\n")).as_bytes());
        let port_build = dir.join(format!("port-{}", &key[..12]));
        for a in &mut build_args {
            *a = a.replace("{BUILD}", &port_build.display().to_string());
        }
        let inputs = record::Inputs {
            moat: env!("CARGO_PKG_VERSION").into(),
            source: if tree.id.starts_with("path:") {
                // edited in place: its files' stamp says when it changed
                format!("{} {}", tree.id, crate::source::path_stamp(&tree.root))
            } else {
                tree.id.clone()
            },
            board: board.name.clone(),
            board_sha256: sha256_hex(&serde_json::to_vec(board)?),
            build_args: build_args.clone(),
            toolchain: tc
                .bin
                .iter()
                .map(|b| format!("bin={}", b.path.display()))
                .chain(sdk_dir.iter().map(|d| format!("sdk={}", d.path.display())))
                .collect(),
            manifest_sha256: file_sha256(&manifest).context("cannot read the rendered manifest")?,
            hash_module_sha256: sha256_hex(hash_text.as_bytes()),
            modules: table
                .iter()
                .map(|(k, v)| (k.to_string(), hex::encode(v)))
                .collect(),
            native_sha256,
        };
        let record_path = dir.join("record.json");
        let previous = Record::load(&record_path);
        let outcome = |rec: &Record, rebuilt: bool| Outcome {
            target: target.name.clone(),
            node: target.node.as_ref().map(|n| n.name.clone()),
            board: board.name.clone(),
            firmware: dir.join(&rec.firmware[0].path),
            firmware_sha256: rec.firmware[0].sha256.clone(),
            modules: table.clone(),
            rebuilt,
            dir: dir.clone(),
        };
        if let Some(prev) = previous.as_ref().filter(|r| r.is_current(&inputs, &dir)) {
            progress.note(&target.name, "up to date");
            return Ok(outcome(prev, false));
        }

        // 4. Compile, when the whole toolchain is there.
        if !missing.is_empty() {
            return Err(ToolchainMissing {
                target: target.name.clone(),
                board: board.name.clone(),
                missing: missing
                    .iter()
                    .map(|m| format!("\n  - {m}"))
                    .collect::<String>(),
                manifest: manifest.display().to_string(),
                hash_module: hash_file.display().to_string(),
            }
            .into());
        }
        tools::require(&[tools::MAKE, tools::PYTHON3])?;
        remove_stale_port_builds(&dir, &port_build)?;
        let log = dir.join("build.log");
        let _ = std::fs::remove_file(&log);
        let sdk_path = sdk_dir.as_ref().map(|d| d.path.as_path());
        let toolchain_env = |cmd: &mut Command| tc.apply(cmd, sdk_path);
        let make = if board.build == BuildSystem::Cmake {
            // The port's CMake build (rp2): configured, then built below.
            cmake::prepare(
                &tree,
                board,
                &port_dir,
                &port_build,
                &build_args,
                &self.cache,
                &log,
                &toolchain_env,
                &mut |m| progress.note(&target.name, m),
            )?
        } else {
            let mut make = Command::new("make");
            make.arg("-C")
                .arg(&port_dir)
                .arg(format!("-j{}", source::jobs()))
                .arg(format!("BUILD={}", port_build.display()))
                .args(&build_args)
                .env_remove("MAKEFLAGS")
                .env_remove("MFLAGS")
                .env_remove("MAKELEVEL");
            tree.apply_build_env(&mut make);
            toolchain_env(&mut make);
            make
        };
        let expected = previous
            .as_ref()
            .map_or(FIRST_BUILD_STEPS, |r| r.compile_steps);
        progress.compile_start(&target.name, expected);
        let mut steps = 0u64;
        let result = run_logged(make, &log, |line| {
            if is_step_line(line) {
                steps += 1;
            }
            progress.compile_line(line);
        });
        progress.compile_end();
        result.with_context(|| {
            format!(
                "compiling `{}` for board {} failed",
                target.name, board.name
            )
        })?;

        // Artefacts out, record written.
        let mut firmware = vec![];
        for a in &board.firmware {
            let src = port_build.join(&a.path);
            let rel = format!("firmware/{}", a.path);
            let dest = dir.join(&rel);
            copy_atomically(&src, &dest).with_context(|| {
                format!(
                    "the build did not produce {} (board {} lists it)",
                    src.display(),
                    board.name
                )
            })?;
            firmware.push(record::Artefact {
                path: rel,
                sha256: file_sha256(&dest).context("cannot read the copied firmware")?,
                offset: a.offset,
            });
        }
        if firmware.is_empty() {
            bail!("board {} lists no firmware artefact", board.name);
        }
        let rec = Record {
            format: record::FORMAT,
            target: target.name.clone(),
            inputs,
            firmware,
            compile_steps: steps,
        };
        rec.save(&record_path)?;
        Ok(outcome(&rec, true))
    }

    /// The project's app folders; a missing one is an error.
    fn app_dirs(&self) -> anyhow::Result<Vec<PathBuf>> {
        app_dirs(self.project)
    }
}

/// The project's `[apps] paths`, each checked to be a folder.
pub fn app_dirs(project: &Project) -> anyhow::Result<Vec<PathBuf>> {
    let dirs = project.app_dirs();
    for d in &dirs {
        if !d.is_dir() {
            bail!(
                "[apps] paths names {}, which is not a folder; create it or remove it from moat.toml",
                d.display()
            );
        }
    }
    Ok(dirs)
}

/// A rendered frozen manifest and what MicroPython's manifest tool needs
/// to read it.
pub struct StagedManifest {
    /// The rendered `manifest.py`.
    pub manifest: PathBuf,
    pub vars: ManifestVars,
    /// The template context it was rendered with.
    pub ctx: serde_json::Value,
    /// Where the `_hash` module is (a placeholder until the table is known).
    pub hash_file: PathBuf,
}

/// Stages the node runtime under `gen/` and renders the frozen manifest
/// for `target`: shared by `moat build` and `moat diff-update`, so both
/// see exactly the same module list.
pub fn stage_manifest(
    gen: &Path,
    tree: &SourceTree,
    target: &Target,
    app_dirs: &[PathBuf],
    templates: &Templates,
) -> anyhow::Result<StagedManifest> {
    let board = &target.board;
    let runtime_dir = gen.join("runtime");
    let hash_dir = gen.join("hash");
    let lib_dir = gen.join("mpy-lib");
    modules::stage_runtime(&runtime_dir)?;
    // The manifest tool insists on a micropython-lib; ours is empty.
    modules::write_if_changed(&lib_dir.join("README.md"), b"")?;
    let hash_file = hash_dir.join("_hash.py");
    if !hash_file.exists() {
        modules::write_if_changed(&hash_file, b"hashes = {}\n")?;
    }
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
    let ctx = serde_json::json!({
        "target": target.name,
        "node": target.node.as_ref().map(|n| &n.name),
        "board": board,
        "runtime_dir": runtime_dir,
        "app_dirs": app_dirs,
        "hash_dir": hash_dir,
        "port_modules": port_dir.join("modules/_boot.py").is_file(),
        "micropython": tree.root,
    });
    let manifest_text = templates.render("manifest.py.j2", &ctx)?;
    let manifest = gen.join("manifest.py");
    modules::write_if_changed(&manifest, manifest_text.as_bytes())?;
    Ok(StagedManifest {
        manifest,
        vars: ManifestVars {
            mpy_dir: tree.root.clone(),
            port_dir,
            board_dir,
            mpy_lib_dir: lib_dir,
        },
        ctx,
        hash_file,
    })
}

/// Stages the native module's sources (`node-runtime/native`, embedded)
/// as `dir/moat/`, with the `dir/micropython.cmake` that cmake ports take
/// (make ports take `dir`). -> (`dir`, SHA-256 over the sources).
pub fn stage_native(dir: &Path) -> anyhow::Result<(PathBuf, String)> {
    let mut all = vec![];
    for (rel, bytes) in crate::embedded::NATIVE_MODULE {
        modules::write_if_changed(&dir.join("moat").join(rel), bytes)?;
        all.extend_from_slice(format!("{rel}\n{}\n", bytes.len()).as_bytes());
        all.extend_from_slice(bytes);
    }
    modules::write_if_changed(
        &dir.join("micropython.cmake"),
        b"include(${CMAKE_CURRENT_LIST_DIR}/moat/micropython.cmake)\n",
    )?;
    Ok((dir.to_path_buf(), sha256_hex(&all)))
}

/// Whether the port's Makefile honours `CFLAGS_EXTRA`.
fn port_takes_cflags_extra(port_dir: &Path) -> bool {
    std::fs::read_to_string(port_dir.join("Makefile")).is_ok_and(|m| m.contains("CFLAGS_EXTRA"))
}

fn remove_stale_port_builds(dir: &Path, keep: &Path) -> anyhow::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        let is_port = p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("port-"));
        if is_port && p != keep && p.is_dir() {
            std::fs::remove_dir_all(&p)
                .with_context(|| format!("cannot remove stale build folder {}", p.display()))?;
        }
    }
    Ok(())
}

fn copy_atomically(src: &Path, dest: &Path) -> anyhow::Result<()> {
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = dest.with_extension("moat-tmp");
    std::fs::copy(src, &tmp)?;
    std::fs::rename(&tmp, dest)?;
    Ok(())
}
