//! `moat boards [--json]`: the boards the current project sees (embedded
//! plus its own `boards/*.toml`) and whether each can be built here, with
//! the toolchain settings that apply (`moat::toolchains`).

use moat::board::{Board, Boards, Missing, Origin};
use moat::project;
use moat::toolchains::{Resolved, Toolchains};

#[derive(clap::Args)]
#[command(after_help = moat::toolchains::HELP)]
pub struct Args {
    /// Print a JSON array, one object per board.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    // Inside a project its own boards count, even if its moat.toml is broken.
    let root = project::find_root(&std::env::current_dir()?);
    let boards = match &root {
        Some(root) => Boards::load(root)?,
        None => Boards::embedded(),
    };
    let toolchains = Toolchains::load(root.as_deref())?;
    let rows: Vec<(&Board, Resolved, Vec<Missing>)> = boards
        .iter()
        .map(|b| {
            let tc = toolchains.for_board(b);
            let missing = b.missing(None, &tc);
            (b, tc, missing)
        })
        .collect();
    if args.json {
        let out: Vec<serde_json::Value> = rows
            .iter()
            .map(|(b, tc, missing)| {
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
                    "toolchain": {
                        "bin": tc.bin.iter().map(|s| serde_json::json!({"path": s.path, "from": s.from})).collect::<Vec<_>>(),
                        "sdk": tc.sdk.as_ref().map(|s| serde_json::json!({"path": s.path, "from": s.from})),
                    },
                })
            })
            .collect();
        println!("{}", serde_json::to_string(&out)?);
        return Ok(());
    }
    let width = rows.iter().map(|(b, ..)| b.name.len()).max().unwrap_or(0);
    for (b, tc, missing) in &rows {
        let status = if missing.is_empty() {
            "buildable here".to_owned()
        } else {
            let mut names: Vec<&str> = vec![];
            for m in missing {
                if !names.contains(&m.name()) {
                    names.push(m.name());
                }
            }
            format!("missing: {}", names.join(", "))
        };
        let origin = match &b.origin {
            Origin::Embedded => String::new(),
            Origin::Project(p) => format!(" [{}]", p.display()),
        };
        println!("{:width$}  {status}  — {}{origin}", b.name, b.description);
        for s in tc.bin.iter().chain(&tc.sdk) {
            let what = if tc.sdk.as_ref() == Some(s) {
                "sdk"
            } else {
                "bin"
            };
            println!("{:width$}    {what} {} ({})", "", s.path.display(), s.from);
        }
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
