//! `moat flash`: put a node's built firmware and its config where it runs.
//!
//! For boards that run on this machine (flash method `local`: `unix`) that
//! is the node's folder `.moat/nodes/<node>/` (see [`moat::local_node`]).
//! Other methods are not implemented yet and say so.

use anyhow::bail;
use moat::board::Flash;
use moat::local_node;
use moat::project::Project;

#[derive(clap::Args)]
pub struct Args {
    /// The node to flash (default: every node of the project).
    #[arg(long, short = 'n', value_name = "NODE")]
    pub node: Option<String>,
    /// Print JSON (one object per node).
    #[arg(long)]
    pub json: bool,
    /// Start the node afterwards (in the foreground, as `moat run`).
    #[arg(long)]
    pub run: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let project = Project::find_from_cwd()?;
    let nodes = match &a.node {
        Some(name) => vec![moat::client::pick_node(&project, Some(name))?.clone()],
        None => {
            if project.manifest.nodes.is_empty() {
                bail!("the project has no nodes: add a [nodes.NAME] table to moat.toml");
            }
            project.manifest.nodes.clone()
        }
    };
    if a.run && nodes.len() > 1 {
        bail!("--run starts one node: say which with --node NAME");
    }
    let mut out = Vec::new();
    for node in &nodes {
        let board = project.board_of(node);
        let installed = match &board.flash {
            Flash::Local => local_node::install(&project, node)?,
            other => bail!(
                "node `{}`: flashing {} is not implemented yet (issue: moat flash)",
                node.name,
                other.method()
            ),
        };
        if a.json {
            out.push(serde_json::json!({
                "node": installed.node,
                "board": board.name,
                "method": board.flash.method(),
                "dir": installed.dir,
                "firmware": installed.firmware,
                "firmware_sha256": installed.firmware_sha256,
                "firmware_changed": installed.firmware_changed,
            }));
        } else {
            let what = if installed.firmware_changed {
                "firmware and config installed"
            } else {
                "firmware unchanged, config installed"
            };
            println!("{}: {what} in {}", installed.node, installed.dir.display());
        }
    }
    if a.json {
        println!("{}", serde_json::Value::Array(out));
    }
    if a.run {
        return super::run::run(super::run::Args {
            node: Some(nodes[0].name.clone()),
        });
    }
    Ok(())
}
