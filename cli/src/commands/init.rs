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

/// Renders the scaffold for project `name` on `board`.
fn render(name: &str, board: &Board) -> anyhow::Result<Vec<Planned>> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.set_keep_trailing_newline(true);
    let ctx = minijinja::context! {
        name => name,
        board => board.name,
        link => board.link.as_str(),
        tcp_port => manifest::DEFAULT_TCP_PORT,
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
    let files = render(&name, board)?;

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
            if !old
                .lines()
                .any(|l| l.trim() == ".moat/" || l.trim() == ".moat")
            {
                let sep = if old.is_empty() || old.ends_with('\n') {
                    ""
                } else {
                    "\n"
                };
                std::fs::write(&path, format!("{old}{sep}{}", f.text))
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
    Project::load(dir).context("the generated project does not load (a bug in moat init)")?;

    if args.json {
        let out = serde_json::json!({
            "root": std::path::absolute(dir)?.display().to_string(),
            "name": name,
            "board": board.name,
            "link": board.link.as_str(),
            "node": "demo",
            "created": created,
            "kept": kept,
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
        let next = if board.link == LinkKind::Tcp || board.link == LinkKind::Process {
            "moat build"
        } else {
            "moat build   (set the node's `port` in moat.toml before flashing)"
        };
        println!("Next: cd {} && {next}", dir.display());
    }
    Ok(())
}
