//! `moat init DIR [--board B] [--name N]`: scaffold a buildable project.

use anyhow::{bail, Context};
use moat::board::{Board, Boards, LinkKind};
use moat::manifest::{self, did_you_mean};
use moat::project::Project;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    /// Folder of the new project (created when absent).
    pub dir: PathBuf,
    /// Board of the project's node `demo` (see `moat boards`).
    #[arg(long, default_value = "unix")]
    pub board: String,
    /// Project name (default: the folder's name).
    #[arg(long)]
    pub name: Option<String>,
    /// Print what was created as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The scaffold: (template text, path written in the project).
const FILES: &[(&str, &str)] = &[
    (
        include_str!("../../../templates/init/moat.toml.jinja"),
        "moat.toml",
    ),
    (
        include_str!("../../../templates/init/apps/counter.py.jinja"),
        "apps/counter.py",
    ),
    (
        include_str!("../../../templates/init/README.md.jinja"),
        "README.md",
    ),
    (
        include_str!("../../../templates/init/gitignore.jinja"),
        ".gitignore",
    ),
];

/// One file of the scaffold, rendered.
struct Planned {
    path: &'static str,
    text: String,
}

/// The range `moat init` picks a node's TCP port from (documented in the
/// README): random, so that two projects on one machine rarely collide,
/// and one nothing listens on right now.
pub const PORT_RANGE: std::ops::RangeInclusive<u16> = 27600..=28599;

/// A random port in [`PORT_RANGE`] that nothing on this machine listens
/// on (tried on loopback and all interfaces).
fn pick_port() -> anyhow::Result<u16> {
    let span = u32::from(PORT_RANGE.end() - PORT_RANGE.start()) + 1;
    for _ in 0..64 {
        let mut b = [0u8; 4];
        moat::keys::random_fill(&mut b)?;
        let port = PORT_RANGE.start() + (u32::from_le_bytes(b) % span) as u16;
        let free = ["127.0.0.1", "0.0.0.0"]
            .iter()
            .all(|h| std::net::TcpListener::bind((*h, port)).is_ok());
        if free {
            return Ok(port);
        }
    }
    bail!(
        "no free TCP port found in {}-{}: set the node's `port` in moat.toml by hand",
        PORT_RANGE.start(),
        PORT_RANGE.end()
    )
}

/// Renders the scaffold for project `name` (id `id`) on `board`, its node
/// on TCP port `tcp_port`.
fn render(name: &str, id: &str, tcp_port: u16, board: &Board) -> anyhow::Result<Vec<Planned>> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.set_keep_trailing_newline(true);
    let ctx = minijinja::context! {
        name => name,
        id => id,
        board => board.name,
        link => board.link.as_str(),
        tcp_port => tcp_port,
        emulated => emulated(board),
        micropython_version => manifest::DEFAULT_MICROPYTHON_VERSION,
    };
    FILES
        .iter()
        .map(|(template, path)| {
            let text = env
                .render_str(template, &ctx)
                .with_context(|| format!("rendering the init template for {path}"))?;
            Ok(Planned { path, text })
        })
        .collect()
}

/// The line of the scaffold's `moat.toml` that holds the node's `port`.
fn port_line(files: &[Planned]) -> Option<usize> {
    let toml = files.iter().find(|f| f.path == manifest::FILE_NAME)?;
    toml.text
        .lines()
        .position(|l| l.trim_start_matches("# ").starts_with("port = "))
        .map(|i| i + 1)
}

/// Whether `board` runs emulated on this machine when its node's `port` is
/// a socket (`tcp:127.0.0.1:N`): qemu boards (their run command takes the
/// `{port}`) and the RP2040 (rp2040js). The scaffold gives such a node that
/// port, so `moat build && moat flash && moat mux` runs as it is.
fn emulated(board: &Board) -> bool {
    board.port == "rp2"
        || board
            .run
            .as_ref()
            .is_some_and(|r| r.command.iter().any(|a| a.contains("{port}")))
}

/// A project name from a folder name: letters, digits, `-`, `_`.
fn name_from_dir(dir: &Path) -> String {
    let raw = std::path::absolute(dir)
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let name: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let name = name.trim_matches('-').to_owned();
    if name.is_empty() {
        "project".into()
    } else {
        name
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let dir = &args.dir;
    let manifest_path = dir.join(manifest::FILE_NAME);
    if manifest_path.exists() {
        bail!(
            "{} already exists: `moat init` never overwrites a project; \
             choose another folder or remove the file",
            manifest_path.display()
        );
    }
    // A folder may already hold its own boards (boards/*.toml).
    let boards = if dir.is_dir() {
        Boards::load(dir)?
    } else {
        Boards::embedded()
    };
    let Some(board) = boards.get(&args.board) else {
        let known: Vec<&str> = boards.names().collect();
        bail!(
            "unknown board `{}`; known boards: {}{}",
            args.board,
            known.join(", "),
            did_you_mean(&args.board, known.iter().copied())
        );
    };
    let name = match &args.name {
        Some(n) => {
            if n.is_empty()
                || !n
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                bail!("`{n}` is not a valid project name; use letters, digits, `-` and `_`");
            }
            n.clone()
        }
        None => name_from_dir(dir),
    };
    let id = moat::keys::new_project_id()?;
    moat::runtime_dir::check_socket_name(&name, &id)?;
    let tcp_port = if board.link == LinkKind::Tcp || emulated(board) {
        pick_port()?
    } else {
        manifest::DEFAULT_TCP_PORT
    };
    let files = render(&name, &id, tcp_port, board)?;

    let mut created = Vec::new();
    let mut kept = Vec::new();
    for f in &files {
        let path = dir.join(f.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        if f.path == ".gitignore" && path.exists() {
            // Keep the user's ignores; add ours when missing.
            let old = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            // Keys (.moat/keys) and secrets must never reach git.
            let has = |names: &[&str]| old.lines().any(|l| names.contains(&l.trim()));
            let mut add = String::new();
            if !has(&[".moat/", ".moat"]) {
                add.push_str(
                    "# moat's build records, firmware, node folders and node keys\n.moat/\n",
                );
            }
            if !has(&["secrets.toml", "/secrets.toml"]) {
                add.push_str(
                    "# secret config values (moat.toml: `{ secret = \"name\" }`)\nsecrets.toml\n",
                );
            }
            if !add.is_empty() {
                let sep = if old.is_empty() || old.ends_with('\n') {
                    ""
                } else {
                    "\n"
                };
                std::fs::write(&path, format!("{old}{sep}{add}"))
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            kept.push(f.path);
            continue;
        }
        if path.exists() {
            kept.push(f.path);
            continue;
        }
        std::fs::write(&path, &f.text)
            .with_context(|| format!("cannot write {}", path.display()))?;
        created.push(f.path);
    }

    // The scaffold must load; a failure here is a bug in the templates.
    let mut project =
        Project::load(dir).context("the generated project does not load (a bug in moat init)")?;
    // Each node's key, in the gitignored .moat/keys/ (kept when there).
    let keys = project.ensure_keys()?;

    if args.json {
        let out = serde_json::json!({
            "root": std::path::absolute(dir)?.display().to_string(),
            "name": name,
            "board": board.name,
            "link": board.link.as_str(),
            "node": "demo",
            "id": project.id(),
            "port": (board.link == LinkKind::Tcp).then_some(tcp_port),
            "created": created,
            "kept": kept,
            "keys": keys,
        });
        println!("{out}");
    } else {
        println!(
            "Created project `{name}` in {} (node `demo` on board {}, {} link)",
            dir.display(),
            board.name,
            board.link
        );
        for f in &created {
            println!("  {f}");
        }
        for f in &kept {
            println!("  {f} (kept the existing file)");
        }
        for k in &keys {
            println!("  .moat/keys/{k} (the node's key: keep it out of git, back it up)");
        }
        let runs_here =
            board.link == LinkKind::Tcp || board.link == LinkKind::Process || emulated(board);
        if !runs_here {
            let at = port_line(&files).map_or(String::new(), |n| format!(":{n}"));
            println!(
                "Before `moat flash`: set the node's device in {}{at} (uncomment `port = …` and name your board's serial device, e.g. /dev/ttyUSB0)",
                dir.join(manifest::FILE_NAME).display()
            );
        }
        println!("Next: cd {} && moat build", dir.display());
    }
    Ok(())
}
