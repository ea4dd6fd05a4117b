//! `moat boards [--json]`: the boards the current project sees (embedded
//! plus its own `boards/*.toml`) and whether each can be built here.

use moat::board::{Board, Boards, Missing, Origin};
use moat::project;

#[derive(clap::Args)]
pub struct Args {
    /// Print a JSON array, one object per board.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    // Inside a project its own boards count, even if its moat.toml is broken.
    let boards = match project::find_root(&std::env::current_dir()?) {
        Some(root) => Boards::load(&root)?,
        None => Boards::embedded(),
    };
    let rows: Vec<(&Board, Vec<Missing>)> = boards.iter().map(|b| (b, b.missing(None))).collect();
    if args.json {
        let out: Vec<serde_json::Value> = rows
            .iter()
            .map(|(b, missing)| {
                serde_json::json!({
                    "name": b.name,
                    "description": b.description,
                    "port": b.port,
                    "board": b.board,
                    "variant": b.variant,
                    "link": b.link.as_str(),
                    "flash": b.flash.method(),
                    "ram_kb": b.ram_kb,
                    "flash_kb": b.flash_kb,
                    "origin": match &b.origin {
                        Origin::Embedded => "embedded".to_owned(),
                        Origin::Project(p) => p.display().to_string(),
                    },
                    "status": if missing.is_empty() { "buildable" } else { "missing" },
                    "missing": missing,
                    "sources": b.sources.iter().map(|s| &s.name).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let width = rows.iter().map(|(b, _)| b.name.len()).max().unwrap_or(0);
    for (b, missing) in &rows {
        let status = if missing.is_empty() {
            "buildable here".to_owned()
        } else {
            let names: Vec<&str> = missing
                .iter()
                .map(|m| match m {
                    Missing::Tool { name, .. } | Missing::Source { name, .. } => name.as_str(),
                })
                .collect();
            format!("missing: {}", names.join(", "))
        };
        let origin = match &b.origin {
            Origin::Embedded => String::new(),
            Origin::Project(p) => format!(" [{}]", p.display()),
        };
        println!("{:width$}  {status}  — {}{origin}", b.name, b.description);
        for m in missing {
            println!("{:width$}    {m}", "");
        }
        if !b.sources.is_empty() {
            let names: Vec<&str> = b.sources.iter().map(|s| s.name.as_str()).collect();
            println!(
                "{:width$}    also needs sources in the MicroPython tree: {}",
                "",
                names.join(", ")
            );
        }
    }
    Ok(())
}
