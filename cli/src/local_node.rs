//! Nodes that run on this machine (boards with `flash.method = "local"`,
//! i.e. `unix`): where they live and how they start.
//!
//! Layout: `.moat/nodes/<node>/` is the node's filesystem root and working
//! directory. It holds the installed firmware (`micropython`, the board's
//! main artefact's file name), `moat.cfg`, `moat_fb.cfg` (the fallback
//! config) and whatever the node or the user writes there, which
//! [`install`] leaves alone. The node is started as the board's
//! `[run] command` (`FIRMWARE -X heapsize=…k -m main`) in that folder; the
//! mux's `process` link and `moat run` both use [`command`].

use crate::board::{Board, Flash};
use crate::manifest::Node;
use crate::project::Project;
use anyhow::{bail, Context};
use mux_runtime::{msgpack, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The node's config file name on its filesystem.
pub const CONFIG_FILE: &str = "moat.cfg";
/// The fallback config, used after a crash.
pub const FALLBACK_FILE: &str = "moat_fb.cfg";
/// The node runtime's crash marker: written at boot, removed on a clean
/// stop; found at boot, it makes the node start on its fallback config.
pub const RUN_MARKER: &str = "moat.run";

/// `.moat/nodes/` of a project.
pub fn nodes_dir(project: &Project) -> PathBuf {
    project.state_dir().join("nodes")
}

/// `.moat/nodes/<node>/`: the node's filesystem root.
pub fn node_dir(project: &Project, node: &str) -> PathBuf {
    nodes_dir(project).join(node)
}

/// `.moat/build/<node>/`: where `moat build` leaves the node's firmware.
pub fn build_dir(project: &Project, node: &str) -> PathBuf {
    project.state_dir().join("build").join(node)
}

/// The file name the firmware is installed under (the board's main
/// artefact's file name, `micropython` for unix).
pub fn firmware_name(board: &Board) -> String {
    board
        .firmware
        .first()
        .and_then(|a| Path::new(&a.path).file_name())
        .map_or_else(
            || "firmware".to_owned(),
            |n| n.to_string_lossy().into_owned(),
        )
}

/// The installed firmware of a local node.
pub fn installed_firmware(project: &Project, node: &Node) -> PathBuf {
    node_dir(project, &node.name).join(firmware_name(project.board_of(node)))
}

/// The built firmware of `node`: the main artefact named by the build
/// record, else the board's artefact file under `firmware/`.
pub fn built_firmware(project: &Project, node: &Node) -> anyhow::Result<PathBuf> {
    let dir = build_dir(project, &node.name);
    let from_record = crate::build::record::Record::load(&dir.join("record.json"))
        .and_then(|r| r.firmware.first().map(|a| dir.join(&a.path)));
    let fw = from_record.unwrap_or_else(|| {
        dir.join("firmware")
            .join(firmware_name(project.board_of(node)))
    });
    if !fw.is_file() {
        bail!(
            "node `{}` has no built firmware ({} is missing): run `moat build --node {}` first",
            node.name,
            fw.display(),
            node.name
        );
    }
    Ok(fw)
}

/// What [`install`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Installed {
    pub node: String,
    /// The node's folder.
    pub dir: PathBuf,
    /// The installed firmware.
    pub firmware: PathBuf,
    /// SHA-256 of the firmware (hex).
    pub firmware_sha256: String,
    /// Whether the firmware changed (false: the same image was there).
    pub firmware_changed: bool,
}

/// The fallback config: the node's links and its identity (`auth`: an
/// authenticated link does not start without its key), plus its `fs` app
/// when it has one, so that after a crash the node is still reachable and
/// repairable (`cfg`, always present, fixes the config; `fs` the files).
pub fn fallback_config(config: &Value) -> Value {
    let mut out = Vec::new();
    if let Some(link) = config.get("link") {
        out.push(("link", link.clone()));
    }
    if let Some(auth) = config.get("auth") {
        out.push(("auth", auth.clone()));
    }
    let files = config.get("apps").and_then(|apps| match apps {
        Value::Map(pairs) => pairs
            .iter()
            .find(|(_, class)| class.as_str() == Some(FILES_APP)),
        _ => None,
    });
    if let Some((Value::Str(name), class)) = files {
        out.push((
            "apps",
            Value::Map(vec![(name.as_str().into(), class.clone())]),
        ));
        if let Some(settings) = config.get(name) {
            out.push((name.as_str(), settings.clone()));
        }
    }
    Value::map(out)
}

/// The node runtime's file app, kept in the fallback config.
const FILES_APP: &str = "fs.Files";

/// Installs `node`'s built firmware and its config into its folder, each
/// file atomically (temporary name, then rename). Files the node or the
/// user wrote there stay.
pub fn install(project: &Project, node: &Node) -> anyhow::Result<Installed> {
    let board = project.board_of(node);
    if board.flash != Flash::Local {
        bail!(
            "node `{}` is on board `{}`, which does not run on this machine (flash method `{}`)",
            node.name,
            board.name,
            board.flash.method()
        );
    }
    let built = built_firmware(project, node)?;
    let dir = node_dir(project, &node.name);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let image = std::fs::read(&built).with_context(|| format!("reading {}", built.display()))?;
    let sha = crate::build::record::sha256_hex(&image);
    let firmware = dir.join(firmware_name(board));
    let changed = crate::build::record::file_sha256(&firmware).as_deref() != Some(sha.as_str());
    if changed {
        write_atomic(&firmware, &image, true)?;
    }
    let config = node.config();
    write_atomic(&dir.join(CONFIG_FILE), &msgpack::to_vec(&config), false)?;
    // A crash marker left by a node that was killed would make the next
    // start boot the fallback config (without the user's apps): a fresh
    // install starts on the config just written.
    match std::fs::remove_file(dir.join(RUN_MARKER)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e)
                .with_context(|| format!("removing the crash marker in {}", dir.display()))
        }
        _ => {}
    }
    write_atomic(
        &dir.join(FALLBACK_FILE),
        &msgpack::to_vec(&fallback_config(&config)),
        false,
    )?;
    Ok(Installed {
        node: node.name.clone(),
        dir,
        firmware,
        firmware_sha256: sha,
        firmware_changed: changed,
    })
}

/// Writes `bytes` to a temporary file next to `path` and renames it over
/// `path`, so a reader sees the old or the new content, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8], executable: bool) -> anyhow::Result<()> {
    use std::io::Write;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.moat-tmp"));
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        if executable {
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(std::fs::Permissions::from_mode(0o755))?;
        }
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", path.display()));
    }
    Ok(())
}

/// The command that starts an installed local node: the board's `[run]`
/// command in the node's folder. Stdio is left to the caller.
pub fn command(project: &Project, node: &Node) -> anyhow::Result<Command> {
    let board = project.board_of(node);
    if crate::emulator::rp2040js::is_emulated(project, node) {
        let cache = crate::source::Cache::from_env()?;
        return crate::emulator::rp2040js::run_command(project, node, &cache);
    }
    let Some(run) = &board.run else {
        bail!(
            "node `{}` is on board `{}`, which does not run on this machine; only boards with flash method `local` (unix) do",
            node.name,
            board.name
        );
    };
    let dir = node_dir(project, &node.name);
    let firmware = installed_firmware(project, node);
    if !firmware.is_file() {
        bail!(
            "node `{}` is not installed ({} is missing): run `moat flash --node {}` first",
            node.name,
            firmware.display(),
            node.name
        );
    }
    let port = match &node.link {
        crate::manifest::Link::Tcp { port, .. } => port.to_string(),
        // An emulated UART behind a socket: `port = "tcp:127.0.0.1:N"`.
        crate::manifest::Link::Serial(_) => node
            .port
            .as_deref()
            .and_then(crate::emulator::socket_port)
            .unwrap_or(crate::manifest::DEFAULT_TCP_PORT)
            .to_string(),
        _ => crate::manifest::DEFAULT_TCP_PORT.to_string(),
    };
    let argv = run.argv(&firmware, &[("port", &port)]);
    let (program, args) = argv
        .split_first()
        .context("the board's run command is empty")?;
    let mut cmd = Command::new(program);
    cmd.args(args).current_dir(&dir);
    Ok(cmd)
}
