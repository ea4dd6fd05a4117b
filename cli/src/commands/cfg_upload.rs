//! `moat cfg upload`: the node's `moat.cfg` from the manifest, replaced
//! atomically, then made the running config (`moat::update::config`).

use moat::client::{self, Target};
use moat::project::Project;
use moat::update::config;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub target: Target,
    /// Show the difference, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print one JSON object: {node, changes, uploaded, restart}.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let project = Project::find_from_cwd()?;
    let node = client::pick_node(&project, a.target.node.as_deref())?.clone();
    let out = client::block_on(config::upload(&project, &node, &a.target, a.dry_run))??;
    let lines: Option<Vec<String>> = out
        .changes
        .as_ref()
        .map(|c| c.iter().map(ToString::to_string).collect());
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "node": node.name,
                "changes": lines,
                "uploaded": out.uploaded,
                "restart": out.restart,
                "dry_run": a.dry_run,
            })
        );
        return Ok(());
    }
    match &lines {
        None => println!("{}: no readable moat.cfg on the node", node.name),
        Some(l) if l.is_empty() => println!("{}: moat.cfg is the manifest's", node.name),
        Some(l) => {
            for line in l {
                println!("{line}");
            }
        }
    }
    if out.uploaded {
        let how = match out.restart {
            "soft-reset" => "runtime restarted (the link changed)",
            _ => "apps restarted",
        };
        println!("{}: moat.cfg replaced; {how}", node.name);
    } else if a.dry_run && lines.as_ref().is_none_or(|l| !l.is_empty()) {
        println!("{}: dry run, nothing sent", node.name);
    }
    Ok(())
}
